"""The operator against the real control plane + KWOK: children, lifecycle, failures."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from http.server import ThreadingHTTPServer

import pytest
from kubernetes import client

from tests.integration.conftest import Operator, Trainings, kubectl, manifest
from tests.support.kwok import terminate_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def _env(pod: client.V1Pod) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env or []}


def _uids(pods: list[client.V1Pod]) -> set[str]:
    return {p.metadata.uid for p in pods}


def _running_group(trainings: Trainings, name: str, workers: int = 3) -> list[client.V1Pod]:
    status = trainings.wait_phase(name, "Running", timeout=45)
    assert status["workers"]["summary"] == f"{workers}/{workers}"
    pods = trainings.pods(name)
    assert len(pods) == workers
    return pods


def test_three_workers_children_and_success(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    owner = trainings.create(manifest("bert"))
    pods = wait_for(lambda: len(p := trainings.pods("bert")) == 3 and p, what="3 worker pods")
    assert [p.metadata.name for p in pods] == [f"bert-worker-{i}" for i in range(3)]
    hosts = [f"bert-worker-{i}.bert.{namespace}.svc:2222" for i in range(3)]
    for index, pod in enumerate(pods):
        assert json.loads(_env(pod)["TF_CONFIG"]) == {
            "cluster": {"worker": hosts},
            "task": {"type": "worker", "index": index},
            "environment": "cloud",
        }
        (ref,) = pod.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == (
            "BertTraining",
            "bert",
            owner["metadata"]["uid"],
            True,
        )
        labels = pod.metadata.labels
        assert labels["berth.dev/training"] == "bert" and labels["berth.dev/role"] == "worker"
        assert labels["berth.dev/index"] == str(index)
        assert labels["app.kubernetes.io/managed-by"] == "berth-operator"
        assert pod.spec.hostname == f"bert-worker-{index}" and pod.spec.subdomain == "bert"
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.automount_service_account_token is False
        assert pod.spec.restart_policy == "Never"
        container = pod.spec.containers[0]
        assert container.security_context.allow_privilege_escalation is False
        assert container.termination_message_policy == "FallbackToLogsOnError"
        assert container.image == "berth-trainer:test"
        assert container.resources.limits == {"nvidia.com/gpu": "1"}
    services = trainings.core.list_namespaced_service(namespace).items
    assert [s.metadata.name for s in services] == ["bert"]
    assert services[0].spec.cluster_ip == "None"
    assert {p.name: p.port for p in services[0].spec.ports} == {"tf-port": 2222, "metrics": 9090}
    maps = [
        m
        for m in trainings.core.list_namespaced_config_map(namespace).items
        if m.metadata.name.startswith("bert")
    ]
    assert [m.metadata.name for m in maps] == ["bert-config"]
    assert "globalBatchSize: 48" in maps[0].data["config.yaml"]
    # Its workers' NetworkPolicy: the TF port from its own workers; the metrics port from the
    # operator's --metrics-peer flags (none here: closed); nothing else.
    policy = client.NetworkingV1Api(trainings.core.api_client).read_namespaced_network_policy(
        "bert", namespace
    )
    workers = {"berth.dev/training": "bert", "berth.dev/role": "worker"}
    assert policy.spec.pod_selector.match_labels == workers
    assert policy.spec.policy_types == ["Ingress"]
    (tf_rule,) = policy.spec.ingress
    assert [(p.protocol, p.port) for p in tf_rule.ports] == [("TCP", 2222)]
    assert [peer.pod_selector.match_labels for peer in tf_rule._from] == [workers]
    for child in (services[0], maps[0], policy):
        assert child.metadata.owner_references[0].uid == owner["metadata"]["uid"]

    _running_group(trainings, "bert")
    # Worker 0 leaves its final figures in its termination message (nothing was scraped: a run
    # shorter than the scrape interval); they come with the phase.
    figures = {
        "step": 100,
        "totalSteps": 100,
        "loss": 1.25,
        "validation": {"step": 100, "metrics": {"accuracy": 0.61234, "loss": 2.5}},
    }
    terminate_pod(trainings.core, namespace, "bert-worker-0", 0, message=json.dumps(figures))
    status = trainings.wait_phase("bert", "Succeeded")
    assert status["completionTime"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 100
    assert (status["progress"]["percent"], status["progress"]["loss"]) == (100, 1.25)
    assert (status["progress"]["etaSeconds"], status["progress"]["summary"]) == (0, "100/100")
    assert status["validation"]["step"] == 100
    assert status["validation"]["summary"] == "acc 0.612"
    assert {m["name"]: m["value"] for m in status["validation"]["metrics"]} == {
        "accuracy": 0.61234,
        "loss": 2.5,
    }
    from tests.integration.conftest import kubectl

    table = kubectl("get", "bt", "bert", "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, row = (line.split() for line in table.stdout.splitlines())
    assert header[3:8] == ["STEP", "%", "LOSS", "EXAMPLES/S", "METRIC"], header
    assert row[1] == "Succeeded" and row[3:6] == ["100/100", "100", "1.25"], row
    assert row[6:8] == ["acc", "0.612"], row  # no rate was scraped: EXAMPLES/S is blank
    reasons = {e.reason for e in trainings.events("bert")}
    assert {"CreatedWorkers", "Completed"} <= reasons
    # Workers still running when worker 0 succeeded (their exit not yet reported) finish on
    # their own: cleanPodPolicy Running deletes only those still running a grace period later,
    # so every worker's pod, and its logs, stay.
    for index in (1, 2):
        terminate_pod(trainings.core, namespace, f"bert-worker-{index}", 0)
    wait_for(
        lambda: (
            [p.status.phase for p in trainings.pods("bert", alive_only=False)] == 3 * ["Succeeded"]
        ),
        what="every worker Succeeded, none deleted",
    )


def test_killed_worker_restarts_whole_group(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    trainings.create(manifest("oom"))
    before = _uids(_running_group(trainings, "oom"))
    terminate_pod(trainings.core, namespace, "oom-worker-1", 137, reason="OOMKilled")
    wait_for(lambda: trainings.status("oom").get("restarts") == 1, what="restarts=1")
    after = _running_group(trainings, "oom")
    assert _uids(after).isdisjoint(before)
    assert {p.metadata.labels["berth.dev/restart"] for p in after} == {"1"}
    assert "Restarting" in {e.reason for e in trainings.events("oom")}


def test_permanent_exit_code_fails_with_termination_message(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    trainings.create(manifest("bad", runPolicy={"restartPolicy": "ExitCode"}))
    _running_group(trainings, "bad")
    terminate_pod(
        trainings.core,
        namespace,
        "bad-worker-2",
        2,
        message="config.yaml: training.steps must be positive",
    )
    status = trainings.wait_phase("bad", "Failed")
    assert "training.steps must be positive" in status["message"]
    assert "exit code 2" in status["message"]
    assert status.get("restarts", 0) == 0
    events = wait_for(
        lambda: [e for e in trainings.events("bad") if e.type == "Warning"], what="warning events"
    )
    assert any("training.steps must be positive" in e.message for e in events)


def test_backoff_limit_counts_group_restarts(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    trainings.create(manifest("flaky", runPolicy={"backoffLimit": 1}))
    _running_group(trainings, "flaky")
    terminate_pod(trainings.core, namespace, "flaky-worker-0", 201)
    wait_for(lambda: trainings.status("flaky").get("restarts") == 1, what="restarts=1")
    _running_group(trainings, "flaky")
    said = "CUDA error: out of memory"
    terminate_pod(trainings.core, namespace, "flaky-worker-1", 137, message=said)
    status = trainings.wait_phase("flaky", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert status["restarts"] == 1
    # `kubectl berth describe` (the plugin on PATH) names the failing worker with its exit code
    # and message, and what ended the first group.
    shown = kubectl("berth", "describe", "flaky", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "Phase:       Failed (BackoffLimitExceeded)" in lines, shown.stdout
    (row,) = (line.split() for line in lines if line.split()[:2] == ["1", "flaky-worker-1"])
    assert row[3:6] == ["Failed", "false", "137"], shown.stdout
    assert f"  worker 1 (flaky-worker-1) failed: exit code 137 (Error): {said}" in lines
    assert "  restart 1: worker 0 (flaky-worker-0) failed: exit code 201 (Error)" in lines
    # A training that is not there: kubectl's own error and exit code.
    missing = kubectl("berth", "logs", "no-such", "-n", namespace)
    assert (missing.returncode, missing.stderr) == (
        1,
        'Error from server (NotFound): berttrainings.berth.dev "no-such" not found\n',
    )


def test_unschedulable_pods_fail_after_pending_timeout(
    operator: Operator, trainings: Trainings
) -> None:
    trainings.create(
        manifest(
            "stuck",
            runPolicy={"pendingTimeoutSeconds": 3},
            podTemplate={"spec": {"nodeSelector": {"berth.dev/no-such-pool": "true"}}},
        )
    )
    status = trainings.wait_phase("stuck", "Failed", timeout=30)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Unschedulable"
    assert "pendingTimeoutSeconds" in status["message"]
    wait_for(lambda: not trainings.pods("stuck"), what="pending pods cleaned up")


def test_active_deadline_fires_without_events(operator: Operator, trainings: Trainings) -> None:
    trainings.create(manifest("deadline", runPolicy={"activeDeadlineSeconds": 5}))
    _running_group(trainings, "deadline")
    status = trainings.wait_phase("deadline", "Failed", timeout=20)
    started = time.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ")
    done = time.strptime(status["completionTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert 5 <= time.mktime(done) - time.mktime(started) <= 10
    assert (
        next(c for c in status["conditions"] if c["type"] == "Failed")["reason"]
        == "DeadlineExceeded"
    )


def test_suspend_and_resume(operator: Operator, trainings: Trainings) -> None:
    trainings.create(manifest("pause"))
    before = _uids(_running_group(trainings, "pause"))
    trainings.patch("pause", {"spec": {"runPolicy": {"suspend": True}}})
    trainings.wait_phase("pause", "Suspended")
    wait_for(lambda: not trainings.pods("pause", alive_only=False), what="pods gone")
    trainings.patch("pause", {"spec": {"runPolicy": {"suspend": False}}})
    after = _running_group(trainings, "pause")
    assert _uids(after).isdisjoint(before)


def test_operator_restart_keeps_pods(
    operator_factory: Callable[..., Operator], trainings: Trainings
) -> None:
    first = operator_factory()
    trainings.create(manifest("steady"))
    before = _uids(_running_group(trainings, "steady"))
    first.kill()
    operator_factory()
    generation = trainings.patch("steady", {"spec": {"training": {"steps": 200}}})["metadata"][
        "generation"
    ]
    wait_for(
        lambda: trainings.status("steady").get("observedGeneration") == generation,
        what="new operator observed the new generation",
    )
    pods = trainings.pods("steady", alive_only=False)
    assert _uids(pods) == before
    assert trainings.status("steady")["phase"] == "Running"


def test_progress_from_worker_metrics(
    operator: Operator,
    trainings: Trainings,
    metrics_server: Callable[..., ThreadingHTTPServer],
) -> None:
    trainings.create(manifest("watched"))
    pods = _running_group(trainings, "watched")
    ip = pods[0].status.pod_ip
    # Another process on worker 0's address (an old group's worker, a reused IP) is never read.
    failures = operator.metric("berth_operator_progress_scrape_failures_total")
    impostor = metrics_server(ip, trainings.namespace, "watched", restart=7)
    wait_for(
        lambda: operator.metric("berth_operator_progress_scrape_failures_total") > failures,
        what="the impostor scraped",
    )
    assert "progress" not in trainings.status("watched")
    impostor.shutdown()
    impostor.server_close()
    metrics_server(ip, trainings.namespace, "watched")
    progress = wait_for(
        lambda: (trainings.status("watched").get("progress") or {}).get("step"),
        timeout=30,
        what="status.progress.step",
    )
    assert progress == 120
    status = trainings.status("watched")
    assert status["progress"]["summary"] == "120/1000"
    assert status["progress"]["loss"] == 2.5
    assert status["progress"]["examplesPerSecond"] == 320.0
    assert status["progress"]["lastCheckpointStep"] == 100
    assert status["progress"]["percent"] == 12
    # The chief's validation gauges, in the same status write.
    assert status["validation"]["step"] == 100
    assert status["validation"]["metrics"] == [
        {"name": "accuracy", "value": 0.41234},
        {"name": "loss", "value": 3.5},
    ]
    assert status["validation"]["summary"] == "acc 0.412"
    assert status["validation"]["updatedAt"] == status["progress"]["updatedAt"]
    from tests.integration.conftest import kubectl

    table = kubectl("get", "bt", "watched", "-n", trainings.namespace)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "WORKERS",
        "STEP",
        "%",
        "LOSS",
        "EXAMPLES/S",
        "METRIC",
        "RESTARTS",
        "QUEUE",
        "AGE",
    ]
    assert row.split()[:10] == [
        "watched", "Running", "3/3", "120/1000", "12", "2.5", "320", "acc", "0.412", "0",
    ]  # fmt: skip


def test_deleting_training_removes_children(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    trainings.create(manifest("gone"))
    _running_group(trainings, "gone")
    trainings.custom.delete_namespaced_custom_object(
        "berth.dev", "v1alpha1", namespace, "berttrainings", "gone"
    )
    wait_for(lambda: not trainings.pods("gone", alive_only=False), timeout=60, what="pods GC")
    wait_for(
        lambda: not trainings.core.list_namespaced_service(namespace).items,
        timeout=60,
        what="service GC",
    )
    wait_for(
        lambda: (
            not [
                m
                for m in trainings.core.list_namespaced_config_map(namespace).items
                if m.metadata.name == "gone-config"
            ]
        ),
        timeout=60,
        what="config GC",
    )


def test_ttl_after_finished_and_operator_endpoints(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    trainings.create(manifest("short", workers=1, runPolicy={"ttlSecondsAfterFinished": 1}))
    (pod,) = _running_group(trainings, "short", workers=1)
    assert "TF_CONFIG" not in _env(pod)
    terminate_pod(trainings.core, namespace, "short-worker-0", 0)
    wait_for(
        lambda: (
            not trainings.custom.list_namespaced_custom_object(
                "berth.dev", "v1alpha1", namespace, "berttrainings"
            )["items"]
        ),
        what="training deleted",
    )
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=5
    ) as response:
        assert response.status == 200
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
    ) as response:
        text = response.read().decode()
    assert "berth_operator_pods_created_total 1.0" in text
    assert "berth_operator_reconcile_seconds_count" in text
    assert 'berth_operator_trainings_finished_total{phase="Succeeded"} 1.0' in text
