"""spec.tpu.provider cloud end to end: the operator (a subprocess) drives the real
TpuAsyncClient against the in-process fake Cloud TPU API (tests/support/fake_tpu.py), and keeps
each namespace to its own nodes and the projects the admin allowed it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from kubernetes import client

from berth_operator.tpu.tenancy import TrainingRef
from tests.conftest import delete_namespace, new_namespace
from tests.integration.conftest import GROUP, PLURAL, VERSION, Operator, Trainings, manifest
from tests.support.fake_tpu import FakeTpu
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

NODE = "projects/berth-test/locations/us-central2-b/nodes/{}"
SA = "trainer@berth-test.iam.gserviceaccount.com"


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


def fake_api(fake: FakeTpu) -> list[str]:
    """Operator flags for the fake Cloud TPU API."""
    return ["--tpu-api-endpoint", fake.endpoint, "--tpu-api-insecure"]


@pytest.fixture
def tpu_operator(
    fake_tpu: FakeTpu, operator_factory: Callable[..., Operator], namespace: str
) -> Operator:
    # fake_tpu first: it must outlive the teardown that deletes trainings (finalizers).
    return operator_factory(*fake_api(fake_tpu), "--tpu-project", f"{namespace}=berth-test")


@pytest.fixture
def second_namespace(api: client.ApiClient) -> Iterator[str]:
    """Another test namespace; BertTrainings left in it lose their finalizers at teardown."""
    name = new_namespace(api)
    yield name
    custom = client.CustomObjectsApi(api)
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        patch = {"metadata": {"finalizers": None}}
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, name, PLURAL, item["metadata"]["name"], patch
        )
    delete_namespace(api, name)


def node_id(trainings: Trainings, name: str) -> str:
    """The Cloud TPU node id of training `name` (it derives from the training's uid)."""
    return TrainingRef(trainings.namespace, name, trainings.get(name)["metadata"]["uid"]).node_id


def wait_node(fake: FakeTpu, trainings: Trainings, name: str, count: int = 1) -> str:
    """Wait until training `name`'s node was created `count` times; its id."""
    node = node_id(trainings, name)
    wait_for(
        lambda: fake.created.count(NODE.format(node)) >= count and fake.node(node),
        timeout=30,
        what=f"TPU {node} of {name} created ({count})",
    )
    return node


def test_create_ready_progress_succeeded_deleted(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    trainings.create(cloud_manifest("tpu-ok"))
    tpu = wait_node(fake_tpu, trainings, "tpu-ok")
    node = fake_tpu.node(tpu)
    assert node is not None and node.accelerator_type == "v4-8"
    script = node.metadata["startup-script"]
    assert "agent-worker-number" in script and "TPU_NAME=local" in script
    assert "berth-trainer:test berth-trainer train" in script
    status = trainings.wait_phase("tpu-ok", "Starting")
    assert status["tpu"]["name"] == NODE.format(tpu)
    fake_tpu.set_state(tpu, "READY")
    status = trainings.wait_phase("tpu-ok", "Running")
    assert status["tpu"]["state"] == "READY" and status["tpu"]["endpoints"] == ["10.0.0.2:8470"]
    fake_tpu.set_guest(tpu, step="40", loss="3.25", examples_per_second="512", state="running")
    progress = wait_for(
        lambda: (
            (trainings.status("tpu-ok").get("progress") or {}).get("step") == 40
            and trainings.status("tpu-ok")["progress"]
        ),
        timeout=30,
        what="progress from guest attributes",
    )
    assert progress["loss"] == 3.25 and progress["summary"] == "40/100"
    fake_tpu.set_guest(tpu, step="100", state="succeeded", exit_code="0")
    status = trainings.wait_phase("tpu-ok", "Succeeded")
    assert status["progress"]["step"] == 100
    wait_for(lambda: fake_tpu.node(tpu) is None, timeout=30, what="TPU deleted")
    assert fake_tpu.deleted == [NODE.format(tpu)]


def test_preempted_tpu_is_recreated(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    """A Spot preemption is a disruption: counted apart from the failures of backoffLimit."""
    trainings.create(cloud_manifest("tpu-pre"))
    tpu = wait_node(fake_tpu, trainings, "tpu-pre")
    fake_tpu.set_state(tpu, "READY")
    trainings.wait_phase("tpu-pre", "Running")
    fake_tpu.set_state(tpu, "PREEMPTED")
    wait_node(fake_tpu, trainings, "tpu-pre", count=2)
    status = trainings.status("tpu-pre")
    assert (status["restarts"], status["disruptions"], status["phase"]) == (0, 1, "Restarting")
    assert fake_tpu.deleted == [NODE.format(tpu)]
    fake_tpu.set_state(tpu, "READY")
    status = trainings.wait_phase("tpu-pre", "Running")
    assert (status["restarts"], status["disruptions"]) == (0, 1)
    assert {"Disrupted", "Restarting"} <= {e.reason for e in trainings.events("tpu-pre")}


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


def delete_and_wait(trainings: Trainings, name: str) -> None:
    """Delete BertTraining `name` and wait until its finalizer let it go."""
    trainings.custom.delete_namespaced_custom_object(
        GROUP, VERSION, trainings.namespace, PLURAL, name
    )
    wait_for(
        lambda: (
            not any(
                t["metadata"]["name"] == name
                for t in trainings.custom.list_namespaced_custom_object(
                    GROUP, VERSION, trainings.namespace, PLURAL
                )["items"]
            )
        ),
        timeout=30,
        what=f"BertTraining {name} gone (finalizer released)",
    )


def test_deleting_the_training_deletes_the_tpu(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    trainings.create(cloud_manifest("tpu-del", spot=True))
    tpu = wait_node(fake_tpu, trainings, "tpu-del")
    assert list(fake_tpu.queued) == [
        f"projects/berth-test/locations/us-central2-b/queuedResources/{tpu}"
    ]
    fake_tpu.set_state(tpu, "READY")
    trainings.wait_phase("tpu-del", "Running")
    delete_and_wait(trainings, "tpu-del")
    assert not fake_tpu.nodes and not fake_tpu.queued


def test_unavailable_api_is_retried_without_crashing(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    fake_tpu.unavailable = True
    trainings.create(cloud_manifest("tpu-down"))
    wait_for(lambda: fake_tpu.refused >= 3, timeout=30, what="three refused calls")
    assert not fake_tpu.nodes and trainings.status("tpu-down").get("phase") != "Failed"
    fake_tpu.unavailable = False
    tpu = wait_node(fake_tpu, trainings, "tpu-down")
    fake_tpu.set_state(tpu, "READY")
    trainings.wait_phase("tpu-down", "Running", timeout=60)
    log = tpu_operator.log.read_text()
    assert "Cloud TPU API unavailable" in log and "Traceback" not in log


def test_same_name_in_two_namespaces_gets_two_nodes(
    fake_tpu: FakeTpu,
    operator_factory: Callable[..., Operator],
    api: client.ApiClient,
    trainings: Trainings,
    second_namespace: str,
) -> None:
    """Two teams' `tpu-twin` get a node each, labelled with their own namespace and uid; the
    VM's service account is the admin's pin in one namespace, the spec's in the other."""
    ours, theirs = trainings.namespace, second_namespace
    operator_factory(
        *fake_api(fake_tpu),
        "--namespace",
        theirs,
        "--tpu-project",
        f"{ours}=berth-test",
        "--tpu-project",
        f"{theirs}=berth-test",
        "--tpu-service-account",
        f"{ours}={SA}",
    )
    other = Trainings(api, theirs)
    trainings.create(cloud_manifest("tpu-twin"))
    other.create(cloud_manifest("tpu-twin", serviceAccount="x@berth-test.iam.gserviceaccount.com"))
    nodes = [wait_node(fake_tpu, t, "tpu-twin") for t in (trainings, other)]
    assert len(set(nodes)) == 2 and len(fake_tpu.nodes) == 2
    for tpu, team, account in zip(
        nodes, (trainings, other), (SA, "x@berth-test.iam.gserviceaccount.com"), strict=True
    ):
        node = fake_tpu.node(tpu)
        assert node is not None and node.service_account.email == account
        assert dict(node.labels) == {
            "managed-by": "berth-operator",
            "berth-namespace": team.namespace,
            "berth-training": "tpu-twin",
            "berth-uid": team.get("tpu-twin")["metadata"]["uid"],
        }
    delete_and_wait(other, "tpu-twin")
    assert fake_tpu.deleted == [NODE.format(nodes[1])] and fake_tpu.node(nodes[0]) is not None


def test_a_node_that_is_not_the_trainings_is_never_used_or_deleted(
    tpu_operator: Operator, fake_tpu: FakeTpu, trainings: Trainings
) -> None:
    """A node of the training's id whose labels name another training (here: no uid, as an
    older Berth labelled them) blocks the training with a condition and a Warning event; it
    is neither adopted, nor read, nor deleted, by the passes or by the finalizer."""
    body = cloud_manifest("tpu-clash")
    body["spec"]["runPolicy"] = {"suspend": True}  # no node until the foreign one is there
    trainings.create(body)
    trainings.wait_phase("tpu-clash", "Suspended")
    tpu = node_id(trainings, "tpu-clash")
    fake_tpu.plant_node(NODE.format(tpu), {"managed-by": "berth-operator", "berth-training": "x"})
    fake_tpu.set_guest(tpu, state="succeeded")
    trainings.patch("tpu-clash", {"spec": {"runPolicy": {"suspend": False}}})
    status = wait_for(
        lambda: (s := trainings.status("tpu-clash")).get("phase") == "Pending" and s,
        timeout=30,
        what="tpu-clash Pending on the foreign node",
    )
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"]) == ("False", "TpuNodeConflict")
    assert (
        NODE.format(tpu) in created["message"] and "neither uses nor deletes" in created["message"]
    )
    warning = wait_for(
        lambda: next(
            (e for e in trainings.events("tpu-clash") if e.reason == "TpuNodeConflict"), None
        ),
        timeout=30,
        what="TpuNodeConflict event",
    )
    assert warning.type == "Warning"
    delete_and_wait(trainings, "tpu-clash")
    assert fake_tpu.created == [] and fake_tpu.deleted == [] and fake_tpu.node(tpu) is not None


def test_the_admins_rules_refuse_before_any_api_call(
    fake_tpu: FakeTpu,
    operator_factory: Callable[..., Operator],
    trainings: Trainings,
    namespace: str,
) -> None:
    """A project outside the namespace's allow-list, and (when the admin requires one) a
    training without its own credentialsSecret, wait with the reason: no Cloud TPU call."""
    operator_factory(
        *fake_api(fake_tpu),
        "--tpu-project",
        f"{namespace}=berth-test",
        "--tpu-require-credentials-secret",
    )
    trainings.create(cloud_manifest("tpu-elsewhere", project="someone-elses"))
    trainings.create(cloud_manifest("tpu-no-key"))
    expected = {
        "tpu-elsewhere": (
            "TpuProjectNotAllowed",
            f"spec.tpu.project: 'someone-elses' is not allowed in namespace {namespace} "
            "(allowed: berth-test)",
        ),
        "tpu-no-key": ("TpuCredentialsRequired", "spec.tpu.credentialsSecret: required"),
    }
    for name, (reason, message) in expected.items():
        status = wait_for(
            lambda n=name: (s := trainings.status(n)).get("message") and s,
            timeout=30,
            what=f"{name} refused",
        )
        assert status["phase"] == "Pending" and status["message"].startswith(message)
        created = next(c for c in status["conditions"] if c["type"] == "Created")
        assert (created["status"], created["reason"]) == ("False", reason)
        wait_for(
            lambda n=name, r=reason: any(
                e.reason == r and e.type == "Warning" for e in trainings.events(n)
            ),
            timeout=30,
            what=f"{reason} event",
        )
    delete_and_wait(trainings, "tpu-elsewhere")
    assert fake_tpu.calls == 0
