"""data.prepare on the real control plane + KWOK: the Indexed Job runs before the workers.

The real kube-controller-manager's Job controller runs the Job: it creates the indexed pods,
KWOK runs them (tests/support/kwok.py makes them exit), and the Job controller marks the Job
Complete or Failed; the operator decides from that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client

from tests.integration.conftest import Operator, Trainings, _metrics_handler, manifest
from tests.support.chartrbac import chart_rbac_kubeconfig
from tests.support.kwok import terminate_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

#: data with a preparation of two slices (the paths are never read: KWOK runs no process).
PREPARED_DATA = {
    "train": "gs://berth-test/train/*.txt",
    "prepare": {"workers": 2, "output": "gs://berth-test/shards"},
}
#: What a prepare worker serves on its metrics port: 40 of its slice's 100 bytes read.
PREPARE_METRICS = (
    "# TYPE berth_prepare_input_bytes gauge\nberth_prepare_input_bytes 40.0\n"
    "# TYPE berth_prepare_input_total_bytes gauge\nberth_prepare_input_total_bytes 100.0\n"
    "# TYPE berth_prepare_examples gauge\nberth_prepare_examples 7.0\n"
)


def _by_role(trainings: Trainings, name: str, role: str) -> list[client.V1Pod]:
    return [p for p in trainings.pods(name) if p.metadata.labels.get("berth.dev/role") == role]


def _running_prepare(trainings: Trainings, name: str) -> list[client.V1Pod]:
    pods = _by_role(trainings, name, "prepare")
    return [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]


def _running_prepare_pods(trainings: Trainings, name: str, count: int) -> list[client.V1Pod]:
    return wait_for(
        lambda: (
            len(pods := _by_role(trainings, name, "prepare")) == count
            and len(_running_prepare(trainings, name)) == count
            and pods
        ),
        timeout=45,
        what=f"{count} running prepare pods",
    )


@pytest.fixture
def prepare_metrics() -> Iterator[list[ThreadingHTTPServer]]:
    """Servers of PREPARE_METRICS on prepare pods' IPs (KWOK pod IPs are loopback), stopped
    after the test."""
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_prepare_job_runs_then_the_workers_start(
    operator: Operator,
    trainings: Trainings,
    namespace: str,
    prepare_metrics: list[ThreadingHTTPServer],
) -> None:
    owner = trainings.create(manifest("prep", workers=2, data=PREPARED_DATA))
    trainings.wait_phase("prep", "Preparing")
    batch = client.BatchV1Api(trainings.core.api_client)
    job = batch.read_namespaced_job("prep-prepare", namespace)
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == job.spec.parallelism == 2
    assert job.spec.backoff_limit_per_index == 3  # runPolicy.backoffLimit's default
    assert [r.action for r in job.spec.pod_failure_policy.rules] == ["Ignore", "FailJob"]
    (ref,) = job.metadata.owner_references
    assert (ref.kind, ref.uid, ref.controller) == ("BertTraining", owner["metadata"]["uid"], True)

    pods = _running_prepare_pods(trainings, "prep", 2)
    assert not _by_role(trainings, "prep", "worker")
    indexes = sorted(p.metadata.labels["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]
    container = pods[0].spec.containers[0]
    assert container.command[:2] == ["berth-trainer", "prepare"]
    assert pods[0].spec.security_context.run_as_non_root is True
    assert container.resources.limits is None  # no GPU held while it tokenizes
    # Progress: the operator scrapes the prepare pods it can reach (pod 0 here) and sums.
    server = ThreadingHTTPServer(
        (pods[0].status.pod_ip, 9090), _metrics_handler(PREPARE_METRICS.encode())
    )
    prepare_metrics.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    progress = wait_for(
        lambda: (
            (p := trainings.status("prep").get("progress") or {}).get("summary") == "prepare 40%"
            and p
        ),
        timeout=20,
        what="prepare progress in status",
    )
    assert (progress["preparedBytes"], progress["inputBytes"]) == (40, 100)

    # A prepare pod killed mid-shard (137) is retried: the Job controller replaces its index
    # (the trainer leaves no partial shard, test_trainer_corpus_scale.py); still Preparing.
    killed = pods[1].metadata.name
    terminate_pod(trainings.core, namespace, killed, 137)
    pods = wait_for(
        lambda: (
            len(ps := [p for p in _running_prepare(trainings, "prep") if p.metadata.name != killed])
            == 2
            and ps
        ),
        timeout=45,
        what="the killed prepare pod's index replaced",
    )
    assert trainings.status("prep")["phase"] == "Preparing"
    assert not _by_role(trainings, "prep", "worker")

    for pod in pods:
        terminate_pod(trainings.core, namespace, pod.metadata.name, 0)
    workers = wait_for(
        lambda: len(w := _by_role(trainings, "prep", "worker")) == 2 and w,
        timeout=45,
        what="workers created after the Job completed",
    )
    assert [w.metadata.name for w in workers] == ["prep-worker-0", "prep-worker-1"]
    status = trainings.wait_phase("prep", "Running", timeout=45)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Prepared"] == "True"
    assert status["prepare"]["succeeded"] == 2 and status["prepare"]["summary"] == "2/2"
    reasons = {e.reason for e in trainings.events("prep")}
    assert {"CreatedPrepareJob", "Preparing", "Prepared", "CreatedWorkers"} <= reasons


def test_failed_prepare_pod_fails_the_training(
    api: client.ApiClient,
    kubeconfig: str,
    operator_factory: Callable[..., Operator],
    trainings: Trainings,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Under the chart's RBAC: the Job watch, create and the prepare NetworkPolicy need no
    more than the chart grants."""
    with chart_rbac_kubeconfig(api, kubeconfig, namespace, tmp_path / "sa.kubeconfig") as as_chart:
        operator_factory(kubeconfig=as_chart)
        trainings.create(manifest("badprep", workers=2, data=PREPARED_DATA))
        _fail_a_slice(trainings, namespace)


def _fail_a_slice(trainings: Trainings, namespace: str) -> None:
    pods = _running_prepare_pods(trainings, "badprep", 2)
    policy = client.NetworkingV1Api(trainings.core.api_client).read_namespaced_network_policy(
        "badprep-prepare", namespace
    )
    assert policy.spec.pod_selector.match_labels == {
        "berth.dev/training": "badprep",
        "berth.dev/role": "prepare",
    }
    assert not policy.spec.ingress  # no --metrics-peer: nothing may reach the prepare pods
    said = "data.train: gs://berth-test/train/b.txt line 3: not UTF-8"
    terminate_pod(trainings.core, namespace, pods[1].metadata.name, 3, message=said)
    status = trainings.wait_phase("badprep", "Failed", timeout=45)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PrepareFailed"
    assert said in status["message"] and "exit code 3" in status["message"]
    assert not _by_role(trainings, "badprep", "worker")
    events = wait_for(
        lambda: [e for e in trainings.events("badprep") if e.reason == "PrepareFailed"],
        what="PrepareFailed event",
    )
    assert events[0].type == "Warning" and said in events[0].message
