"""spec.tpu: the GKE pod placement, the Cloud TPU node and the pure Cloud TPU decision."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from berth_operator.builders import build_worker_pod, parse_spec
from berth_operator.tpu.node import chips, node_fields, startup_script
from berth_operator.tpu.policy import TpuObservation, decide
from berth_operator.tpu.tenancy import TrainingRef
from tests.unit.operator.factories import T0, Training, make_training

GKE = {"provider": "gke", "acceleratorType": "tpu-v5-lite-podslice", "topology": "2x4"}
CLOUD = {
    "provider": "cloud",
    "acceleratorType": "v4-32",
    "runtimeVersion": "tpu-vm-tf-2.16.1-pod-pjrt",
    "project": "p",
    "zone": "us-central2-b",
}
REF = TrainingRef("ml", "bert", "uid-1")  # make_training's


def cloud(**status: Any) -> Training:
    training = make_training(workers=1).with_spec(tpu=CLOUD)
    return training.with_status(**status) if status else training


@pytest.mark.parametrize(("topology", "count"), [("1x1", 1), ("2x2", 4), ("2x4", 8), ("2x2x1", 4)])
def test_chips(topology: str, count: int) -> None:
    assert chips(topology) == count


def test_gke_pod_wins_over_the_template() -> None:
    training = make_training(workers=1).with_spec(
        tpu=GKE,
        podTemplate={"spec": {"nodeSelector": {"pool": "x"}, "tolerations": [{"key": "a"}]}},
    )
    spec = build_worker_pod(training, 0, "img", 0)["spec"]
    assert spec["nodeSelector"] == {
        "pool": "x",
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x4",
    }
    assert spec["tolerations"][-1] == {
        "key": "google.com/tpu",
        "operator": "Exists",
        "effect": "NoSchedule",
    }
    (container,) = spec["containers"]
    assert container["resources"] == {
        "limits": {"google.com/tpu": "8"},
        "requests": {"google.com/tpu": "8"},
    }
    assert {"name": "TPU_NAME", "value": "local"} in container["env"]


def test_cloud_node_and_startup_script() -> None:
    training = cloud()
    node = node_fields(training, parse_spec(training), "img:1", restart=2, service_account=None)
    assert (node["accelerator_type"], node["runtime_version"]) == (
        "v4-32",
        "tpu-vm-tf-2.16.1-pod-pjrt",
    )
    script = node["metadata"]["startup-script"]
    assert script == startup_script(training, parse_spec(training), "img:1", 2)
    # multi-host: the resolver looks the node up by its id
    assert f"TPU_NAME={REF.node_id}" in script
    assert '[ "$worker" = "0" ] || exit 0' in script and "img:1 berth-trainer train" in script
    assert "put exit_code" in script and "dir: gs://b/ckpt" in script


NAME = f"projects/p/locations/us-central2-b/nodes/{REF.node_id}"
CASES = [
    ("nothing-yet", {}, TpuObservation(), "create", "Starting", (0, 0)),
    (
        "create-pending",
        {"phase": "Starting"},
        TpuObservation(operation_pending=True),
        "none",
        "Starting",
        (0, 0),
    ),
    (
        "creating",
        {"phase": "Starting"},
        TpuObservation(node_state="CREATING"),
        "none",
        "Starting",
        (0, 0),
    ),
    ("ready", {"phase": "Starting"}, TpuObservation(node_state="READY"), "none", "Running", (0, 0)),
    (  # Spot preemption is a disruption: not counted against backoffLimit
        "preempted",
        {"phase": "Running", "restarts": 3},
        TpuObservation(node_state="PREEMPTED"),
        "delete",
        "Restarting",
        (3, 1),
    ),
    (
        "still-preempted",
        {"phase": "Restarting", "disruptions": 1},
        TpuObservation(node_state="PREEMPTED"),
        "delete",
        "Restarting",
        (0, 1),
    ),
    (
        "deleting",
        {"phase": "Restarting", "disruptions": 1},
        TpuObservation(node_state="DELETING"),
        "none",
        "Restarting",
        (0, 1),
    ),
    (
        "recreate",
        {"phase": "Restarting", "disruptions": 1},
        TpuObservation(),
        "create",
        "Restarting",
        (0, 1),
    ),
    ("vanished", {"phase": "Running"}, TpuObservation(), "none", "Restarting", (1, 0)),
    (
        "backoff",
        {"phase": "Running", "restarts": 3},
        TpuObservation(node_state="READY", guest={"state": "failed", "exit_code": "137"}),
        "delete",
        "Failed",
        (3, 0),
    ),
    (
        "quota",
        {"phase": "Starting"},
        TpuObservation(create_error="Quota exceeded"),
        "none",
        "Failed",
        (0, 0),
    ),
    (
        "succeeded",
        {"phase": "Running"},
        TpuObservation(node_state="READY", guest={"state": "succeeded"}),
        "delete",
        "Succeeded",
        (0, 0),
    ),
    (
        "failed-retryable",
        {"phase": "Running"},
        TpuObservation(node_state="READY", guest={"state": "failed", "exit_code": "137"}),
        "delete",
        "Restarting",
        (1, 0),
    ),
    ("finished-gone", {"phase": "Succeeded"}, TpuObservation(), "none", "Succeeded", (0, 0)),
    (
        "finished-left-over",
        {"phase": "Failed"},
        TpuObservation(node_state="READY"),
        "delete",
        "Failed",
        (0, 0),
    ),
]


@pytest.mark.parametrize(
    ("status", "obs", "action", "phase", "counts"),
    [pytest.param(s, o, a, p, c, id=i) for i, s, o, a, p, c in CASES],
)
def test_decide(
    status: dict[str, Any],
    obs: TpuObservation,
    action: str | None,
    phase: str,
    counts: tuple[int, int],
) -> None:
    """`counts`: (restarts, disruptions) after the pass."""
    plan = decide(cloud(**status), obs, T0)
    assert (plan.action, plan.status["phase"]) == (action, phase)
    assert (plan.status["restarts"], plan.status["disruptions"]) == counts
    assert plan.status["tpu"]["name"] == NAME


def test_disruption_limit() -> None:
    training = cloud(phase="Running", disruptions=2).with_run_policy(disruptionLimit=2)
    plan = decide(training, TpuObservation(node_state="PREEMPTED"), T0)
    assert (plan.action, plan.status["phase"]) == ("delete", "Failed")
    assert plan.status["message"] == "runPolicy.disruptionLimit 2 reached: TPU bert is PREEMPTED"


def test_quota_message_and_progress_from_guest() -> None:
    failed = decide(
        cloud(phase="Starting"), TpuObservation(create_error="Quota 'TPUV4' exceeded"), T0
    )
    assert failed.status["message"] == "creating the TPU: Quota 'TPUV4' exceeded"
    running = decide(
        cloud(phase="Running"),
        TpuObservation(
            node_state="READY",
            health="HEALTHY",
            endpoints=("10.0.0.2:8470",),
            guest={"step": "40", "loss": "3.25", "examples_per_second": "512"},
        ),
        T0,
    )
    assert running.status["progress"] == {
        "step": 40,
        "totalSteps": 1000,
        "percent": 4,
        "summary": "40/1000",
        "loss": 3.25,
        "examplesPerSecond": 512.0,
        "updatedAt": "2025-01-01T12:00:00Z",
    }
    assert running.status["tpu"] == {
        "name": NAME,
        "state": "READY",
        "health": "HEALTHY",
        "endpoints": ["10.0.0.2:8470"],
    }


def test_deadline_and_ttl() -> None:
    training = cloud(phase="Running", startTime="2025-01-01T11:00:00Z").with_run_policy(
        activeDeadlineSeconds=60
    )
    plan = decide(training, TpuObservation(node_state="READY"), T0)
    assert (plan.action, plan.status["phase"]) == ("delete", "Failed")
    done = cloud(phase="Succeeded", completionTime="2025-01-01T11:00:00Z").with_run_policy(
        ttlSecondsAfterFinished=10
    )
    assert decide(done, TpuObservation(), T0 + timedelta(seconds=1)).delete_training
    assert not decide(done, TpuObservation(node_state="READY"), T0).delete_training  # TPU first
