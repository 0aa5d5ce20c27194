"""spec.tpu.provider cloud end to end: the operator (a subprocess) drives the real
TpuAsyncClient against the in-process fake Cloud TPU API (tests/support/fake_tpu.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.fake_tpu import FakeTpu
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

NODE = "projects/berth-test/locations/us-central2-b/nodes/{}"


def cloud_manifest(name: str, **tpu: Any) -> dict[str, Any]:
    body = manifest(name, workers=1, resources=None)
    del body["spec"]["resources"]
    body["spec"]["tpu"] = {
        "provider": "cloud",
        "acceleratorType": "v4-8",
        "runtimeVersion": "tpu-vm-tf-2.16.1-pjrt",
        "project": "berth-test",
        "zone": "us-central2-b",
        **tpu,
    }
    body["spec"]["training"]["globalBatchSize"] = 64
    return body


@pytest.fixture
def fake_tpu() -> Iterator[FakeTpu]:
    fake = FakeTpu().start()
    yield fake
    fake.stop()


@pytest.fixture
def tpu_operator(fake_tpu: FakeTpu, operator_factory: Callable[..., Operator]) -> Operator:
    # fake_tpu first: it must outlive the teardown that deletes trainings (finalizers).
    return operator_factory("--tpu-api-endpoint", fake_tpu.endpoint, "--tpu-api-insecure")


def wait_node(fake: FakeTpu, name: str, count: int = 1) -> None:
    wait_for(
        lambda: fake.created.count(NODE.format(name)) >= count and fake.node(name),
        timeout=30,
        what=f"TPU {name} created ({count})",
    )


def test_create_ready_progress_succeeded_deleted(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    trainings.create(cloud_manifest("tpu-ok"))
    wait_node(fake_tpu, "tpu-ok")
    node = fake_tpu.node("tpu-ok")
    assert node is not None and node.accelerator_type == "v4-8"
    script = node.metadata["startup-script"]
    assert "agent-worker-number" in script and "TPU_NAME=local" in script
    assert "berth-trainer:test berth-trainer train" in script
    status = trainings.wait_phase("tpu-ok", "Starting")
    assert status["tpu"]["name"] == NODE.format("tpu-ok")
    fake_tpu.set_state("tpu-ok", "READY")
    status = trainings.wait_phase("tpu-ok", "Running")
    assert status["tpu"]["state"] == "READY" and status["tpu"]["endpoints"] == ["10.0.0.2:8470"]
    fake_tpu.set_guest("tpu-ok", step="40", loss="3.25", examples_per_second="512", state="running")
    progress = wait_for(
        lambda: (
            (trainings.status("tpu-ok").get("progress") or {}).get("step") == 40
            and trainings.status("tpu-ok")["progress"]
        ),
        timeout=30,
        what="progress from guest attributes",
    )
    assert progress["loss"] == 3.25 and progress["summary"] == "40/100"
    fake_tpu.set_guest("tpu-ok", step="100", state="succeeded", exit_code="0")
    status = trainings.wait_phase("tpu-ok", "Succeeded")
    assert status["progress"]["step"] == 100
    wait_for(lambda: fake_tpu.node("tpu-ok") is None, timeout=30, what="TPU deleted")
    assert fake_tpu.deleted == [NODE.format("tpu-ok")]


def test_preempted_tpu_is_recreated(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    trainings.create(cloud_manifest("tpu-pre"))
    wait_node(fake_tpu, "tpu-pre")
    fake_tpu.set_state("tpu-pre", "READY")
    trainings.wait_phase("tpu-pre", "Running")
    fake_tpu.set_state("tpu-pre", "PREEMPTED")
    wait_node(fake_tpu, "tpu-pre", count=2)
    status = trainings.status("tpu-pre")
    assert status["restarts"] == 1 and status["phase"] == "Restarting"
    assert fake_tpu.deleted == [NODE.format("tpu-pre")]
    fake_tpu.set_state("tpu-pre", "READY")
    assert trainings.wait_phase("tpu-pre", "Running")["restarts"] == 1
    assert any(e.reason == "Restarting" for e in trainings.events("tpu-pre"))


def test_quota_error_fails_with_the_api_message(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    fake_tpu.fail_create = (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Quota 'TPUV4_PODS' exceeded. Limit: 0 in region us-central2.",
    )
    trainings.create(cloud_manifest("tpu-quota"))
    status = trainings.wait_phase("tpu-quota", "Failed")
    assert "Quota 'TPUV4_PODS' exceeded" in status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TpuCreateFailed"
    assert not fake_tpu.nodes


def test_deleting_the_training_deletes_the_tpu(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    trainings.create(cloud_manifest("tpu-del", spot=True))
    wait_node(fake_tpu, "tpu-del")
    assert list(fake_tpu.queued) == [
        "projects/berth-test/locations/us-central2-b/queuedResources/tpu-del"
    ]
    fake_tpu.set_state("tpu-del", "READY")
    trainings.wait_phase("tpu-del", "Running")
    trainings.custom.delete_namespaced_custom_object(
        "berth.dev", "v1alpha1", trainings.namespace, "berttrainings", "tpu-del"
    )
    wait_for(
        lambda: (
            not trainings.custom.list_namespaced_custom_object(
                "berth.dev", "v1alpha1", trainings.namespace, "berttrainings"
            )["items"]
        ),
        timeout=30,
        what="BertTraining gone (finalizer released)",
    )
    assert not fake_tpu.nodes and not fake_tpu.queued


def test_unavailable_api_is_retried_without_crashing(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    fake_tpu.unavailable = True
    trainings.create(cloud_manifest("tpu-down"))
    wait_for(lambda: fake_tpu.refused >= 3, timeout=30, what="three refused calls")
    assert not fake_tpu.nodes and trainings.status("tpu-down").get("phase") != "Failed"
    fake_tpu.unavailable = False
    wait_node(fake_tpu, "tpu-down")
    fake_tpu.set_state("tpu-down", "READY")
    trainings.wait_phase("tpu-down", "Running", timeout=60)
    log = tpu_operator.log.read_text()
    assert "Cloud TPU API unavailable" in log and "Traceback" not in log
