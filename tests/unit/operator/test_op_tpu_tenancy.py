"""Cloud TPU tenancy: node ids and labels, ownership, the admin's project and service account
rules, and what the pure decision and the client do with a node that is not the training's."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest

from berth_operator.api import TpuSpec
from berth_operator.builders import parse_spec
from berth_operator.settings import parse_settings
from berth_operator.tpu.client import TpuApi, make_client
from berth_operator.tpu.node import node_fields
from berth_operator.tpu.policy import TpuObservation, decide
from berth_operator.tpu.tenancy import (
    Refusal,
    TpuTenancy,
    TrainingRef,
    parse_projects,
    parse_service_accounts,
)
from tests.support.fake_tpu import FakeTpu
from tests.unit.operator.factories import T0, make_training

#: What Compute Engine accepts as a resource name (the TPU VM's), the stricter of the two rules.
NODE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
#: GCP label keys and values (lowercase letters, digits, `_`, `-`; keys start with a letter).
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
UID = "6f1d9c1e-5b7a-4c33-9f0e-2a1b3c4d5e6f"
SA = "trainer@proj-a.iam.gserviceaccount.com"
CLOUD = {
    "provider": "cloud",
    "acceleratorType": "v4-8",
    "runtimeVersion": "tpu-vm-tf-2.16.1-pjrt",
    "project": "proj-a",
    "zone": "us-central2-b",
}


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("ml", "b"), ("ml", "bert"), ("a" * 63, "x" * 52), ("team-a", "bert.v2.long" * 20)],
)
def test_node_id_is_a_valid_fixed_length_name(namespace: str, name: str) -> None:
    ref = TrainingRef(namespace, name, UID)
    assert NODE_ID.match(ref.node_id) and len(ref.node_id) == 30
    assert all(LABEL_KEY.match(k) and LABEL_VALUE.match(v) for k, v in ref.labels.items())
    assert ref.labels["berth-uid"] == UID and ref.owns(ref.labels)


@pytest.mark.parametrize(
    "other",
    [
        TrainingRef("ml-2", "bert", UID),  # same name, another namespace
        TrainingRef("ml", "bert2", UID),
        TrainingRef("ml", "bert", "another-uid"),  # the training recreated
    ],
)
def test_node_id_differs_per_training(other: TrainingRef) -> None:
    assert TrainingRef("ml", "bert", UID).node_id != other.node_id


@pytest.mark.parametrize(
    ("labels", "owned"),
    [
        ({"managed-by": "berth-operator", "berth-uid": UID}, True),
        ({"managed-by": "berth-operator", "berth-uid": "someone-else"}, False),
        ({"managed-by": "berth-operator", "berth-training": "bert"}, False),  # old, no uid
        ({"berth-uid": UID}, False),
        ({}, False),
    ],
)
def test_owns_only_by_uid_label(labels: dict[str, str], owned: bool) -> None:
    assert TrainingRef("ml", "bert", UID).owns(labels) is owned


RULES = TpuTenancy(
    projects={"ml": frozenset({"proj-a", "proj-b"}), "*": frozenset({"shared"})},
    service_accounts={"ml": SA},
)


@pytest.mark.parametrize(
    ("rules", "namespace", "project", "secret", "account", "reason"),
    [
        (RULES, "ml", "proj-a", None, None, None),
        (RULES, "ml", "shared", None, SA, None),
        (RULES, "other", "shared", None, "x@p.iam.gserviceaccount.com", None),
        (RULES, "ml", "proj-c", None, None, "TpuProjectNotAllowed"),
        (RULES, "other", "proj-a", None, None, "TpuProjectNotAllowed"),
        (TpuTenancy(), "ml", "proj-a", "key", None, "TpuProjectNotAllowed"),  # the default
        (TpuTenancy(projects={"*": frozenset({"*"})}), "any", "any-project", None, None, None),
        (
            TpuTenancy(projects={"ml": frozenset({"proj-a"})}, require_credentials_secret=True),
            "ml",
            "proj-a",
            None,
            None,
            "TpuCredentialsRequired",
        ),
        (
            TpuTenancy(projects={"ml": frozenset({"proj-a"})}, require_credentials_secret=True),
            "ml",
            "proj-a",
            "tpu-key",
            None,
            None,
        ),
        (RULES, "ml", "proj-a", None, "x@p.iam.gserviceaccount.com", "TpuServiceAccountNotAllowed"),
    ],
)
def test_refusal(
    rules: TpuTenancy,
    namespace: str,
    project: str,
    secret: str | None,
    account: str | None,
    reason: str | None,
) -> None:
    refusal = rules.refusal(namespace, project, secret, account)
    assert (refusal.reason if refusal else None) == reason


def test_refusal_message_names_the_field_and_the_fix() -> None:
    refusal = RULES.refusal("ml", "proj-c", None, None)
    assert refusal is not None
    assert refusal.message.startswith("spec.tpu.project: 'proj-c' is not allowed in namespace ml")
    assert "(allowed: proj-a, proj-b, shared)" in refusal.message
    assert "--tpu-project ml=PROJECT" in refusal.message


@pytest.mark.parametrize(
    ("namespace", "requested", "used"),
    [
        ("ml", None, SA),
        ("ml", SA, SA),
        ("other", None, None),
        ("other", "o@p.iam.gserviceaccount.com", "o@p.iam.gserviceaccount.com"),
    ],
)
def test_service_account_pin_wins(namespace: str, requested: str | None, used: str | None) -> None:
    assert RULES.service_account(namespace, requested) == used


def test_flags_and_env_make_the_rules() -> None:
    flags = parse_settings(
        [
            "--tpu-project",
            "ml=proj-a,proj-b",
            "--tpu-project",
            "ml=proj-c",
            "--tpu-project",
            "*=shared",
            "--tpu-service-account",
            f"ml={SA}",
            "--tpu-require-credentials-secret",
        ],
        env={},
    ).tpu_tenancy
    assert flags == TpuTenancy(
        projects={"ml": frozenset({"proj-a", "proj-b", "proj-c"}), "*": frozenset({"shared"})},
        service_accounts={"ml": SA},
        require_credentials_secret=True,
    )
    env = {
        "BERTH_TPU_PROJECTS": "ml=proj-a; nlp=proj-b",
        "BERTH_TPU_SERVICE_ACCOUNTS": f"ml={SA}",
        "BERTH_TPU_REQUIRE_CREDENTIALS_SECRET": "true",
    }
    assert parse_settings([], env=env).tpu_tenancy == TpuTenancy(
        projects={"ml": frozenset({"proj-a"}), "nlp": frozenset({"proj-b"})},
        service_accounts={"ml": SA},
        require_credentials_secret=True,
    )
    assert parse_settings([], env={}).tpu_tenancy == TpuTenancy()  # nothing allowed


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--tpu-project", "ml"),
        ("--tpu-project", "ml="),
        ("--tpu-project", "Not_A_Namespace=p"),
        ("--tpu-project", "ml=proj/../other"),
        ("--tpu-service-account", "ml=not-an-email"),
        ("--tpu-service-account", "ml=someone@gmail.com"),
    ],
)
def test_bad_rules_stop_the_operator(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings([flag, value], env={})
    error = capsys.readouterr().err
    assert "expected NAMESPACE=" in error or "not a " in error, error


def test_two_service_accounts_for_one_namespace_are_an_error() -> None:
    with pytest.raises(ValueError, match="two service accounts"):
        parse_service_accounts([f"ml={SA}", "ml=o@p.iam.gserviceaccount.com"])
    assert parse_projects([]) == {}


def test_node_carries_labels_and_service_account() -> None:
    training = make_training(workers=1).with_spec(tpu=CLOUD)
    node = node_fields(training, parse_spec(training), "img", 0, SA)
    assert node["labels"] == {
        "managed-by": "berth-operator",
        "berth-namespace": "ml",
        "berth-training": "bert",
        "berth-uid": "uid-1",
    }
    assert node["service_account"] == {
        "email": SA,
        "scope": ["https://www.googleapis.com/auth/cloud-platform"],
    }
    assert "service_account" not in node_fields(training, parse_spec(training), "img", 0, None)


def cloud(phase: str | None = None, **run_policy: Any) -> dict[str, Any]:
    training = make_training(workers=1).with_spec(tpu=CLOUD).with_run_policy(**run_policy)
    return training.with_status(phase=phase) if phase else training


FOREIGN = TpuObservation(foreign="projects/proj-a/locations/us-central2-b/nodes/x")


@pytest.mark.parametrize(
    ("training", "phase"),
    [
        (cloud(), "Pending"),
        (cloud("Running"), "Pending"),
        (cloud("Restarting"), "Pending"),
        (cloud("Succeeded"), "Succeeded"),  # finished: its own node is gone, the foreign stays
        (cloud(suspend=True), "Suspended"),
    ],
)
def test_a_foreign_node_is_never_created_over_used_or_deleted(
    training: dict[str, Any], phase: str
) -> None:
    plan = decide(training, FOREIGN, T0)
    assert (plan.action, plan.status["phase"]) == ("none", phase)
    if phase == "Pending":
        created = next(c for c in plan.status["conditions"] if c["type"] == "Created")
        assert (created["status"], created["reason"]) == ("False", "TpuNodeConflict")
        assert "its labels do not name this training (uid uid-1)" in created["message"]
        assert [(e.type, e.reason) for e in plan.events] == [("Warning", "TpuNodeConflict")]
        again = decide({**training, "status": plan.status}, FOREIGN, T0)
        assert again.events == []  # one Warning per cause, not one per pass


def test_a_refused_training_waits_with_the_reason_and_keeps_its_tpu_status() -> None:
    refusal = Refusal("TpuProjectNotAllowed", "spec.tpu.project: 'proj-a' is not allowed")
    training = make_training(workers=1).with_spec(tpu=CLOUD).with_status(tpu={"state": "READY"})
    plan = decide(training, TpuObservation(), T0, refusal)
    assert (plan.action, plan.status["phase"], plan.status["message"]) == (
        "none",
        "Pending",
        refusal.message,
    )
    assert plan.status["tpu"] == {"state": "READY"}  # not asked, so not NOT_FOUND
    assert [e.reason for e in plan.events] == ["TpuProjectNotAllowed"]


@pytest.fixture
def fake() -> Iterator[FakeTpu]:
    server = FakeTpu().start()
    yield server
    server.stop()


@pytest.mark.parametrize("spot", [False, True])
def test_client_never_reads_or_deletes_a_foreign_node(fake: FakeTpu, spot: bool) -> None:
    ref = TrainingRef("ml", "bert", UID)
    spec = TpuSpec.model_validate({**CLOUD, "spot": spot})
    name = f"projects/proj-a/locations/us-central2-b/nodes/{ref.node_id}"
    fake.plant_node(name, {"managed-by": "berth-operator", "berth-uid": "another"})
    fake.set_guest(ref.node_id, state="succeeded")

    async def steps() -> Any:
        api = TpuApi(make_client(fake.endpoint, insecure=True))
        seen = await api.observe(ref, spec, None)
        await api.delete(ref, spec)
        return seen, await api.owned_node_exists(ref, spec)

    seen, exists = asyncio.run(steps())
    assert seen == TpuObservation(foreign=name) and not exists
    assert fake.node(ref.node_id) is not None and fake.deleted == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("project", "p/locations/x/nodes/victim"),
        ("project", "Proj"),
        ("zone", "us-central2-b/nodes/victim"),
        ("serviceAccount", "someone@gmail.com"),
        ("serviceAccount", "a@p.iam.gserviceaccount.com/x"),
    ],
)
def test_spec_tpu_ids_cannot_reshape_resource_paths(field: str, value: str) -> None:
    """The same patterns are in the CRD: the API server refuses these at admission."""
    with pytest.raises(ValueError, match=field):
        TpuSpec.model_validate({**CLOUD, field: value})
