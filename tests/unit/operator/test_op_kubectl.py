"""The `kubectl berth` plugin's pure parts: which pods `logs` reads and how it marks them,
what `describe` renders, and kubectl's conventions for flags and errors.

The dicts have the shapes the API server returned for a real training on the test cluster
(`kubectl get -o json` of a KWOK training that restarted once, then failed).
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from berth_operator.kubectl import cli, describe, logs
from tests.unit.operator.factories import T0, make_pod, make_training


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def started(pod: dict[str, Any], state: str = "running") -> dict[str, Any]:
    """`pod` with its trainer container's status as the kubelet reports it once started."""
    pod = copy.deepcopy(pod)
    statuses = pod["status"].setdefault("containerStatuses", [{"name": "trainer", "state": {}}])
    if state == "running":
        statuses[0]["state"] = {"running": {"startedAt": at(1)}}
    statuses[0].update({"ready": state == "running", "restartCount": 0, "image": "img"})
    return pod


def prepare_pod(name: str, index: int, state: str | None = "running") -> dict[str, Any]:
    """A pod of the data.prepare Indexed Job (labels as the Job controller and operator set)."""
    pod: dict[str, Any] = {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {
                "berth.dev/training": "bert",
                "berth.dev/role": "prepare",
                "batch.kubernetes.io/job-completion-index": str(index),
            },
        },
        "spec": {"containers": [{"name": "trainer"}]},
        "status": {"phase": "Running" if state else "Pending"},
    }
    return started(pod) if state else pod


def event(reason: str, message: str, seconds: float, type_: str = "Normal", **more: Any) -> dict:
    """An event the operator (kopf) posted about training `bert`."""
    stamp = (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "involvedObject": {
            "kind": "BertTraining",
            "name": "bert",
            "apiVersion": "berth.dev/v1alpha1",
        },
        "reason": reason,
        "message": message,
        "source": {"component": "kopf"},
        "firstTimestamp": at(int(seconds)),
        "lastTimestamp": at(int(seconds)),
        "type": type_,
        "eventTime": stamp,
        "reportingComponent": "kopf",
        **more,
    }


TRAINING = make_training(workers=3)
WHY_0 = "worker 0 (bert-worker-0) failed: exit code 201 (Error)"
WHY_1 = (
    "worker 1 (bert-worker-1) failed: exit code 137 (OOMKilled): boom: out of memory\nat step 12"
)
#: A training that restarted once (worker 0 exited 201), then failed (worker 1 OOMKilled).
FAILED = TRAINING.with_run_policy(backoffLimit=1).with_status(
    phase="Failed",
    restarts=1,
    disruptions=0,
    startTime=at(0),
    completionTime=at(30),
    message=f"runPolicy.backoffLimit 1 reached: {WHY_1}",
    workers={"active": 0, "failed": 1, "ready": 0, "succeeded": 0, "summary": "0/3"},
    conditions=[
        {"type": "Created", "status": "True", "reason": "WorkersCreated",
         "message": "created 3 worker pod(s)", "lastTransitionTime": at(0)},
        {"type": "Running", "status": "False", "reason": "BackoffLimitExceeded",
         "message": f"runPolicy.backoffLimit 1 reached: {WHY_1}", "lastTransitionTime": at(30)},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": f"runPolicy.backoffLimit 1 reached: {WHY_1}", "lastTransitionTime": at(30)},
    ],
)  # fmt: skip
FAILED_POD = make_pod(
    FAILED,
    1,
    "Failed",
    restart=1,
    exit_code=137,
    reason="OOMKilled",
    message="boom: out of memory\nat step 12",
    node="kwok-gpu-1",
)
FAILED_EVENTS = [
    event("CreatedWorkers", "created pods bert-worker-0, bert-worker-1, bert-worker-2 "
          "(restart 0)", 0.5),
    event("WorkerFailed", WHY_0, 10.2, "Warning"),
    event("Restarting", f"restarting all 3 workers (restart 1): {WHY_0}", 10.3, "Warning"),
    event("AllWorkersReady", "3/3 workers ready", 1.0),
    event("AllWorkersReady", "3/3 workers ready", 12.0),
    event("WorkerFailed", WHY_1, 30.1, "Warning"),
    event("BackoffLimitExceeded", f"runPolicy.backoffLimit 1 reached: {WHY_1}", 30.2, "Warning"),
    # Another object's event: not the training's.
    {**event("Scheduled", "assigned", 1), "involvedObject": {"kind": "Pod", "name": "bert"}},
]  # fmt: skip


# --- logs: which pods, and how their lines are marked ----------------------------------------


def names(chosen: list[logs.Source]) -> list[str]:
    return [f"{s.pod}@{s.group}{'' if s.started else ' (not started)'}" for s in chosen]


R0 = [started(make_pod(TRAINING, i)) for i in range(3)]
R1 = [started(make_pod(TRAINING, i, restart=1)) for i in range(3)]
OLD = [started(make_pod(TRAINING, i, terminating=True)) for i in range(3)]


@pytest.mark.parametrize(
    ("status", "pods", "worker", "expected"),
    [
        ({"phase": "Running", "restarts": 0}, R0, 0, ["bert-worker-0@0"]),
        ({"phase": "Running", "restarts": 0}, R0, 2, ["bert-worker-2@0"]),
        (
            {"phase": "Running", "restarts": 0},
            R0[::-1],
            None,
            ["bert-worker-0@0", "bert-worker-1@0", "bert-worker-2@0"],
        ),
        # The old group is still terminating: only the new group counts.
        ({"phase": "Restarting", "restarts": 1}, OLD, None, []),
        ({"phase": "Starting", "restarts": 1}, [*OLD, *R1[:2]], 1, ["bert-worker-1@1"]),
        # Group = restarts + disruptions.
        (
            {"phase": "Running", "restarts": 1, "disruptions": 1},
            [started(make_pod(TRAINING, 0, restart=2))],
            0,
            ["bert-worker-0@2"],
        ),
        # No status yet: the newest group among the pods.
        ({}, [make_pod(TRAINING, 0, "Pending")], 0, ["bert-worker-0@0 (not started)"]),
        # Preparing: the prepare Job's pods, by completion index; started or not.
        (
            {"phase": "Preparing"},
            [prepare_pod("bert-prepare-1-x", 1), prepare_pod("bert-prepare-0-y", 0, None)],
            0,
            ["bert-prepare-0-y@0 (not started)", "bert-prepare-1-x@0"],
        ),
        ({"phase": "Running"}, [prepare_pod("bert-prepare-0-y", 0)], None, []),
    ],
)
def test_sources_pick_the_current_groups_workers(
    status: dict[str, Any], pods: list[dict[str, Any]], worker: int | None, expected: list[str]
) -> None:
    training = TRAINING.with_status(**status)
    assert names(logs.sources(training, pods, worker)) == expected


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (make_pod(TRAINING, 1, restart=2), "[worker-1 r2] "),
        (make_pod(TRAINING, 0), "[worker-0 r0] "),
        (prepare_pod("bert-prepare-3-z", 3), "[prepare-3] "),
    ],
)
def test_prefix_names_worker_and_group(pod: dict[str, Any], expected: str) -> None:
    assert logs.prefix(pod) == expected


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (make_pod(TRAINING, 0, "Pending"), False),
        (started(make_pod(TRAINING, 0)), True),
        (FAILED_POD, True),  # terminated: its log is still there
        (
            {"status": {"containerStatuses": [{"name": "trainer", "state": {"waiting": {}}}]}},
            False,
        ),
        (
            {"status": {"containerStatuses": [{"name": "sidecar", "state": {"running": {}}}]}},
            False,
        ),
    ],
)
def test_started_means_the_trainer_container_ran(pod: dict[str, Any], expected: bool) -> None:
    assert logs.started(pod, "trainer") is expected


@pytest.mark.parametrize(
    ("status", "events", "expected"),
    [
        (
            {"phase": "Restarting", "message": f"restart 1/3: {WHY_0}"},
            [],
            f"--- group restart 1: restart 1/3: {WHY_0} ---",
        ),
        # Seen only once the new group runs: the newest Restarting event says why.
        (
            {"phase": "Running", "message": "3/3 workers ready"},
            [
                event("Restarting", "restarting all 3 workers (restart 1): old news", 1),
                event("Restarting", "restarting all 3 workers (disruption 1): node lost", 9),
            ],
            "--- group restart 1: disruption 1: node lost ---",
        ),
        ({"phase": "Running"}, [], "--- group restart 1 ---"),
    ],
)
def test_restart_marker_says_why(
    status: dict[str, Any], events: list[dict[str, Any]], expected: str
) -> None:
    reason = logs.restart_reason(TRAINING.with_status(**status), events)
    assert logs.marker(1, reason) == expected


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"a\nb", b"c\n", b"\n", b"d"], ["a", "bc", "", "d"]),
        ([b"\xc3", b"\xa9t\xc3\xa9\n"], ["été"]),
        ([], []),
    ],
)
def test_lines_of_a_chunked_stream(chunks: list[bytes], expected: list[str]) -> None:
    assert list(logs.lines_of(chunks)) == expected


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("10m", 600), ("1h", 3600)])
def test_since(text: str, seconds: int) -> None:
    assert logs.parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1d", "m5", "-5s"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        logs.parse_since(text)


# --- describe ---------------------------------------------------------------------------------


def test_describe_of_a_failed_training_names_the_failing_worker_and_the_restart() -> None:
    shown = describe.render(FAILED, [FAILED_POD], FAILED_EVENTS, T0 + timedelta(seconds=90))
    lines = shown.splitlines()
    assert lines[:9] == [
        "Name:        bert",
        "Namespace:   ml",
        "Phase:       Failed (BackoffLimitExceeded)",
        f"Message:     runPolicy.backoffLimit 1 reached: {describe.one_line(WHY_1)}",
        "Workers:     3",
        f"Started:     {at(0)} (90s ago)",
        f"Completed:   {at(30)} (60s ago)",
        "Restarts:    1 of runPolicy.backoffLimit 1; disruptions 0 (no limit)",
        "",
    ]
    workers = lines[lines.index("Workers (group 1, 0/3 ready):") + 1 :][:5]
    assert workers == [
        "  WORKER  POD            NODE        PHASE   READY  EXIT  REASON",
        "  0       -              -           -       -",
        "  1       bert-worker-1  kwok-gpu-1  Failed  false  137   OOMKilled",
        "  2       -              -           -       -",
        f"  {describe.one_line(WHY_1)}",
    ]
    restarts = lines[lines.index("Restarts:") + 1]
    assert restarts == f"  restart 1: {WHY_0}"
    events = lines[lines.index("Events:") + 1 :]
    assert events[0].split() == ["TYPE", "REASON", "AGE", "COUNT", "MESSAGE"]
    # Oldest first, the two alike folded into one (count 2, the newer age), no Pod's event.
    assert [row.split()[1] for row in events[1:]] == [
        "CreatedWorkers",
        "WorkerFailed",
        "Restarting",
        "AllWorkersReady",
        "WorkerFailed",
        "BackoffLimitExceeded",
    ]
    assert events[4].split()[:4] == ["Normal", "AllWorkersReady", "78s", "2"]


RUNNING = (
    TRAINING.with_spec(task="questionAnswering", tensorboard={"enabled": True})
    .with_status(
        phase="Running",
        restarts=0,
        disruptions=2,
        progress={"step": 120, "totalSteps": 1000, "percent": 12, "loss": 2.5,
                  "examplesPerSecond": 320.0, "etaSeconds": 250, "lastCheckpointStep": 100},
        validation={"step": 100, "summary": "f1 0.412", "metrics": [
            {"name": "exact_match", "value": 0.3}, {"name": "f1", "value": 0.41234}]},
        queue={"name": "team-a", "workload": "bert-abc12", "clusterQueue": "gpus"},
        prepare={"job": "bert-prepare", "workers": 2, "active": 0, "succeeded": 2,
                 "failed": 1, "summary": "2/2"},
        conditions=[{"type": "Running", "status": "True", "reason": "AllWorkersReady",
                     "message": "3/3 workers ready", "lastTransitionTime": at(0)}],
    )
    .with_run_policy(disruptionLimit=5)
)  # fmt: skip
TENSORBOARD_POD = {
    "metadata": {"name": "bert-tensorboard-5d9c-x2", "labels": {"berth.dev/role": "tensorboard"}},
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
}
TENSORBOARD_SERVICE = {"metadata": {"name": "bert-tensorboard"}}


@pytest.mark.parametrize(
    ("pods", "services", "expected"),
    [
        (
            [TENSORBOARD_POD],
            [TENSORBOARD_SERVICE],
            "TensorBoard: Service bert-tensorboard:6006, ready (bert-tensorboard-5d9c-x2); "
            "kubectl berth tensorboard bert",
        ),
        (
            [{**TENSORBOARD_POD, "status": {"phase": "Pending"}}],
            [TENSORBOARD_SERVICE],
            "TensorBoard: Service bert-tensorboard:6006, not ready; kubectl berth tensorboard bert",
        ),
        ([], [], "TensorBoard: enabled; Service bert-tensorboard not created yet"),
    ],
)
def test_describe_of_a_running_training(
    pods: list[dict[str, Any]], services: list[dict[str, Any]], expected: str
) -> None:
    group = [started(make_pod(TRAINING, i, restart=2, node="berth-node-0")) for i in range(3)]
    shown = describe.render(RUNNING, [*group, *pods], [], T0 + timedelta(minutes=5), services)
    lines = shown.splitlines()
    assert lines[2] == "Phase:       Running (AllWorkersReady)"
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines[3:11]}
    assert fields["Progress"] == (
        "step 120/1000 (12%), loss 2.5, 320 examples/s, ETA 4m10s, checkpoint at step 100"
    )
    assert fields["Validation"] == "f1 0.412 at step 100 (exact_match 0.3, f1 0.4123)"
    assert fields["Restarts"] == "0 of runPolicy.backoffLimit 3; disruptions 2 of " + (
        "runPolicy.disruptionLimit 5"
    )
    assert (
        fields["Queue"] == "LocalQueue team-a, Workload bert-abc12, admitted by ClusterQueue gpus"
    )
    assert fields["Prepare"] == "Job bert-prepare: 2/2 slice(s) done, 0 running, 1 failed"
    assert expected in lines
    table = lines[lines.index("Workers (group 2, 3/3 ready):") + 1 :][:4]
    assert [row.split() for row in table[1:]] == [
        [str(i), f"bert-worker-{i}", "berth-node-0", "Running", "true"] for i in range(3)
    ]
    assert lines[-2:] == ["Events:", "  <none>"]


def test_describe_of_a_new_training() -> None:
    shown = describe.render(TRAINING, [], [], T0)
    assert "Phase:       Pending" in shown.splitlines()
    assert "  0       -    -     -      -" in shown.splitlines()
    assert "Progress" not in shown and "Restarts:\n" not in shown


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0s"), (119, "119s"), (120, "2m"), (185, "3m5s"), (600, "10m"), (3 * 3600, "3h"),
     (8 * 3600 + 60, "8h"), (50 * 3600, "2d2h"), (10 * 86400, "10d"), (800 * 86400, "2y")],
)  # fmt: skip
def test_ages_read_as_kubectls(seconds: int, expected: str) -> None:
    assert describe.age(timedelta(seconds=seconds)) == expected


# --- the command line -------------------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kubectl berth")
    for command in ("logs", "describe", "tensorboard"):
        assert f"\n    {command} " in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["lgos", "bert"], "error: argument COMMAND: invalid choice: 'lgos'"),
        (["logs"], "error: the following arguments are required: NAME"),
        (["logs", "bert", "--worker", "1", "--all"], "error: argument --all: not allowed"),
        (["logs", "bert", "--worker", "x"], "error: argument --worker: invalid int value"),
        (["describe", "bert", "--bogus"], "error: unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_1_as_kubectls(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(said)
    assert err.rstrip().endswith("--help' for usage.")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            404,
            {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
             "message": 'berttrainings.berth.dev "bert" not found'},
            'Error from server (NotFound): berttrainings.berth.dev "bert" not found',
        ),
        (
            403,
            {"kind": "Status", "reason": "Forbidden", "message": 'pods is forbidden: User "u"'},
            'Error from server (Forbidden): pods is forbidden: User "u"',
        ),
        (502, None, "Error from server: Bad Gateway"),
    ],
)  # fmt: skip
def test_server_errors_read_as_kubectls(
    status: int, body: dict[str, Any] | None, expected: str
) -> None:
    error = ApiException(status=status, reason="Bad Gateway")
    error.body = json.dumps(body) if body else "<html>"
    assert cli.server_error(error) == expected


KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [
        {"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
        {"name": "plain", "context": {"cluster": "c", "user": "u"}},
    ],
    "current-context": "team",
}


@pytest.mark.parametrize(
    ("context", "namespace", "expected"),
    [(None, None, "team-a"), ("plain", None, "default"), ("plain", "ml", "ml"), (None, "x", "x")],
)
def test_namespace_as_kubectl_chooses_it(
    tmp_path: Path, context: str | None, namespace: str | None, expected: str
) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    session = cli.Session(str(path), context, namespace)
    assert session.namespace == expected
    assert session.api.configuration.host == "https://127.0.0.1:1"


def test_unknown_context_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert cli.main(["--kubeconfig", str(path), "describe", "bert", "--context", "nope"]) == 1
    assert capsys.readouterr().err == 'error: context "nope" does not exist\n'
