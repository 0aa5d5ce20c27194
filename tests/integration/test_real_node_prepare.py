"""data.prepare on the real node: the Indexed Job writes the shards, then the training reads them.

The operator runs as a local process; the prepare pods and the workers run the built trainer
image as real containers on the real node, with the quickstart corpus on a claimed volume
(`RealNode.claimed_corpus`). Two prepare pods each write their slice's shard and marker into
`data.prepare.output` on that volume; once the Job is Complete the operator creates the two
workers, which train a few steps from those shards and export the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client

from tests.integration.conftest import DATA_CLAIM as CLAIM
from tests.integration.conftest import Operator, Trainings
from tests.support.realnode import RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STEPS = 20


def test_prepare_job_writes_the_shards_and_the_training_trains_from_them(
    api: client.ApiClient,
    node: RealNode,
    namespace: str,
    volume: Path,
    operator: Operator,
    trainings: Trainings,
) -> None:
    """`volume` before `operator`: its teardown comes after the operator deleted the training."""
    body = node.tiny_training("prep", STEPS, CLAIM, image=node.image("trainer"))
    body["spec"]["data"]["prepare"] = {"workers": 2, "output": "/data/prep/shards"}
    trainings.create(body)
    preparing = trainings.wait_phase("prep", "Preparing", timeout=60)
    assert preparing["prepare"]["job"] == "prep-prepare"

    final = trainings.wait_finished("prep", timeout=600)
    assert final["phase"] == "Succeeded", final
    conditions = {c["type"]: c for c in final["conditions"]}
    assert conditions["Prepared"]["status"] == "True", conditions
    assert final["prepare"]["succeeded"] == 2 and final["prepare"]["summary"] == "2/2", final
    job = client.BatchV1Api(api).read_namespaced_job("prep-prepare", namespace)
    assert job.status.succeeded == 2
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions)

    # Every slice's shard and marker, complete (no temporary dot-name is left behind).
    shards = volume / "prep" / "shards"
    names = sorted(p.name for p in shards.iterdir())
    assert [n for n in names if n.startswith("slice-")] == [
        "slice-00000-of-00002.json",
        "slice-00001-of-00002.json",
    ], names
    assert [n for n in names if n.startswith("train-")] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ], names
    assert not [n for n in names if n.startswith(".")], names
    for index in range(2):
        assert (shards / f"train-{index:05d}-of-00002.tfrecord").stat().st_size > 0
        marker = json.loads((shards / f"slice-{index:05d}-of-00002.json").read_text())
        assert marker, marker

    # The workers came after the Job and trained from its shards to the last step.
    metrics = json.loads((volume / "prep" / "model" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS, metrics
    events = {e.reason for e in trainings.events("prep")}
    assert {"CreatedPrepareJob", "Preparing", "Prepared", "CreatedWorkers"} <= events, events
    worker = client.CoreV1Api(api).read_namespaced_pod("prep-worker-0", namespace)
    started = worker.metadata.creation_timestamp
    done = max(c.last_transition_time for c in job.status.conditions if c.type == "Complete")
    assert started >= done.replace(microsecond=0), (started, done)
