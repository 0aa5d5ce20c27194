"""The real TpuAsyncClient (through berth_operator.tpu.client) against the in-process fake."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from berth_operator.api import TpuSpec
from berth_operator.tpu.client import TpuApi, TransientTpuError, make_client
from berth_operator.tpu.tenancy import TrainingRef
from tests.support.fake_tpu import FakeTpu

SPEC = TpuSpec.model_validate(
    {
        "provider": "cloud",
        "acceleratorType": "v4-8",
        "runtimeVersion": "tpu-vm-tf-2.16.1-pjrt",
        "project": "p",
        "zone": "us-central2-b",
    }
)
REF = TrainingRef("ml", "bert", "uid-1")
NODE = {
    "accelerator_type": "v4-8",
    "runtime_version": "tpu-vm-tf-2.16.1-pjrt",
    "labels": REF.labels,
}


@pytest.fixture
def fake() -> Iterator[FakeTpu]:
    server = FakeTpu().start()
    yield server
    server.stop()


def run(fake: FakeTpu, steps: Callable[[TpuApi], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        api = TpuApi(make_client(fake.endpoint, insecure=True))
        return await steps(api)

    return asyncio.run(main())


def test_create_observe_guest_and_delete(fake: FakeTpu) -> None:
    async def steps(api: TpuApi) -> Any:
        assert (await api.observe(REF, SPEC, None)).node_state is None
        operation = await api.create(REF, SPEC, NODE)
        assert operation and operation.startswith("projects/fake/locations/fake/operations/")
        assert await api.create(REF, SPEC, NODE) is None  # already exists: fine
        creating = await api.observe(REF, SPEC, operation)
        fake.set_state(REF.node_id, "READY")
        fake.set_guest(REF.node_id, step="7", loss="2.5", state="running")
        ready = await api.observe(REF, SPEC, operation)
        await api.delete(REF, SPEC)
        await api.delete(REF, SPEC)  # gone: fine
        return creating, ready, await api.owned_node_exists(REF, SPEC)

    creating, ready, exists = run(fake, steps)
    assert (creating.node_state, creating.guest) == ("CREATING", {})
    assert (ready.node_state, ready.health, ready.endpoints) == (
        "READY",
        "HEALTHY",
        ("10.0.0.2:8470",),
    )
    assert ready.guest == {"step": "7", "loss": "2.5", "state": "running"}
    assert not exists
    node = fake.created[0]
    assert node == f"projects/p/locations/us-central2-b/nodes/{REF.node_id}"
    assert fake.deleted == [node]


def test_failed_create_operation_is_reported(fake: FakeTpu) -> None:
    fake.fail_create = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Quota 'TPUV4' exceeded")

    async def steps(api: TpuApi) -> Any:
        operation = await api.create(REF, SPEC, NODE)
        return await api.observe(REF, SPEC, operation)

    observed = run(fake, steps)
    assert observed.node_state is None and observed.create_error == "Quota 'TPUV4' exceeded"


def test_spot_uses_a_queued_resource(fake: FakeTpu) -> None:
    spot = SPEC.model_copy(update={"spot": True})

    async def steps(api: TpuApi) -> Any:
        await api.create(REF, spot, NODE)
        seen = await api.observe(REF, spot, None)
        await api.delete(REF, spot)
        return seen

    assert run(fake, steps).node_state == "CREATING"
    assert list(fake.queued) == [] and fake.deleted == fake.created


def test_unavailable_api_is_a_transient_error(fake: FakeTpu) -> None:
    fake.unavailable = True

    async def steps(api: TpuApi) -> Any:
        with pytest.raises(TransientTpuError, match="unavailable"):
            await api.observe(REF, SPEC, None)
        with pytest.raises(TransientTpuError):
            await api.create(REF, SPEC, NODE)

    run(fake, steps)
    assert fake.refused == 2
