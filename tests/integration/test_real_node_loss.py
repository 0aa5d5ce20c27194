"""A training's node loses power (`hack/cluster.py kill-node`): a disruption, not a failure.

Two workers train a tiny BERT on the real node; the operator runs as a local process, so it
outlives the node. Then the node dies as on a power loss: its kubelet, containerd, the shims and
the workers' processes get SIGKILL, and the API objects stay as they were. The API server learns
of it only when the node lifecycle controller, after its grace period without a heartbeat
(~50 s), sets the node's Ready condition to Unknown. That is the operator's cue: it restarts
the group as a disruption (`status.disruptions`, not `status.restarts`), deleting the lost
workers with grace 0, since no kubelet will ever confirm a graceful deletion, and creating the
next group, whose pods stay Pending while the node is down (it is tainted unreachable). Once
the node boots (`start-node`), the group runs, resumes from the last checkpoint and finishes
after exactly the configured steps. Without the operator's node rule the old pods stay on the
dead node (Running, then Terminating, forever) and no new group comes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client

from tests.integration.conftest import DATA_CLAIM as CLAIM
from tests.integration.conftest import Operator, Trainings
from tests.support.realnode import RealNode
from tests.support.tiny import checkpoint_steps
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RESTART = "berth.dev/restart"


def next_group_pending(
    trainings: Trainings, name: str, old: dict[str, str]
) -> list[client.V1Pod] | None:
    """The next group's two workers, Pending, once no pod of the old group (by UID) is left in
    the API server, not even Terminating; None before."""
    pods = trainings.pods(name, alive_only=False)
    if any(p.metadata.uid in old.values() for p in pods):
        return None
    group = [p for p in pods if p.metadata.labels.get(RESTART) == "1"]
    return group if len(group) == 2 and all(p.status.phase == "Pending" for p in group) else None


def test_node_power_loss_restarts_the_group_as_a_disruption_and_the_training_finishes(
    api: client.ApiClient,
    node: RealNode,
    namespace: str,
    volume: Path,
    operator: Operator,
    trainings: Trainings,
) -> None:
    """`volume` before `operator`: its teardown comes after the operator deleted the training."""
    steps = 400
    # No restart to spend: a lost node counted as a failure fails the training.
    run_policy = {"restartPolicy": "OnFailure", "backoffLimit": 0}
    trainings.create(
        node.tiny_training("lost", steps, CLAIM, image=node.image("trainer"), runPolicy=run_policy)
    )
    saved = wait_for(
        lambda: [s for s in checkpoint_steps(volume / "lost" / "ckpt") if s >= 10],
        timeout=300,
        interval=0.2,
        what="a checkpoint at step >= 10 on the node",
    )
    old = {p.metadata.name: p.metadata.uid for p in trainings.pods("lost")}
    assert sorted(old) == ["lost-worker-0", "lost-worker-1"], old

    with node.power_loss():
        group = wait_for(
            lambda: next_group_pending(trainings, "lost", old),
            timeout=180,
            interval=1,
            what="the lost group gone from the API server and the next one Pending",
        )
        assert all(not p.spec.node_name for p in group), [p.spec.node_name for p in group]
        during = wait_for(
            lambda: (s := trainings.status("lost")).get("disruptions") and s,
            timeout=15,
            what="status.disruptions",
        )
        assert (during["disruptions"], during.get("restarts", 0)) == (1, 0), during

    final = trainings.wait_finished("lost", timeout=300)
    assert final["phase"] == "Succeeded", final
    assert (final.get("disruptions"), final.get("restarts", 0)) == (1, 0), final
    # The trainer's own count: the exported metrics, after a resume from a checkpoint the dead
    # group wrote (the last one it saved, at or after the one seen before the loss).
    metrics = json.loads((volume / "lost" / "model" / "metrics.json").read_text())
    assert metrics["steps"] == steps, metrics
    assert (final.get("progress") or {}).get("totalSteps", steps) == steps, final
    log = client.CoreV1Api(api).read_namespaced_pod_log("lost-worker-0", namespace)
    resumed = [json.loads(line) for line in log.splitlines() if '"msg": "resumed"' in line]
    assert resumed and saved[-1] <= resumed[0]["step"] < steps, log[-3000:]
