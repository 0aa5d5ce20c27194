"""Conditions, progress parsing, pod observation, the CLI settings contract and local
manifests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth_operator.conditions import set_condition
from berth_operator.local.manifest import ManifestError, load_manifest
from berth_operator.progress import (
    final_figures,
    metrics_url,
    percent,
    progress_changed,
    progress_from_metrics,
    validation_changed,
    validation_from_metrics,
)
from berth_operator.settings import Settings, parse_settings
from berth_operator.workers import observe_pod
from berth_trainer.observability import final_figures as trainer_final_figures
from tests.unit.operator.factories import make_pod, make_training

METRICS = """# HELP berth_train_step Optimizer steps done.
# TYPE berth_train_step gauge
berth_train_step 120.0
berth_train_total_steps 1000.0
berth_train_loss 2.5
berth_train_examples_per_second 320.0
berth_last_checkpoint_step 100.0
other_metric 1
"""


def test_condition_transition_time_moves_only_on_status_flip() -> None:
    conds = set_condition([], "Running", False, "Starting", "0/3", "t1", 1)
    conds = set_condition(conds, "Running", False, "Starting", "1/3", "t2", 1)
    assert conds[0]["lastTransitionTime"] == "t1" and conds[0]["message"] == "1/3"
    conds = set_condition(conds, "Running", True, "AllWorkersReady", "3/3", "t3", 2)
    assert conds[0]["lastTransitionTime"] == "t3" and conds[0]["observedGeneration"] == 2
    assert len(conds) == 1


def test_progress_from_metrics() -> None:
    progress = progress_from_metrics(METRICS, global_batch_size=32)
    assert progress == {
        "step": 120,
        "totalSteps": 1000,
        "loss": 2.5,
        "examplesPerSecond": 320.0,
        "lastCheckpointStep": 100,
        "percent": 12,
        "etaSeconds": 88,
        "summary": "120/1000",
    }


@pytest.mark.parametrize(
    ("step", "total", "expected"),
    [(0, 1000, 0), (9, 1000, 0), (10, 1000, 1), (999, 1000, 99), (1000, 1000, 100),
     (1001, 1000, 100), (-5, 1000, 0), (3, 0, 0)],
)  # fmt: skip
def test_percent_is_whole_and_clamped(step: int, total: int, expected: int) -> None:
    assert percent(step, total) == expected


VALIDATION_METRICS = """# TYPE berth_validation_step gauge
berth_validation_step 60.0
# TYPE berth_validation gauge
berth_validation{metric="loss"} 0.4
berth_validation{metric="f1"} 0.91249
berth_validation{metric="accuracy"} 0.95
berth_validation{metric="precision"} NaN
"""


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        (
            VALIDATION_METRICS,
            "tokenClassification",
            {
                "step": 60,
                "metrics": [
                    {"name": "accuracy", "value": 0.95},
                    {"name": "f1", "value": 0.91249},
                    {"name": "loss", "value": 0.4},
                ],
                "summary": "f1 0.912",
            },
        ),
        # the headline is not among them (pretraining reports no f1): no summary
        (
            VALIDATION_METRICS.replace('metric="accuracy"', 'metric="mlm"'),
            "pretraining",
            {
                "step": 60,
                "metrics": [
                    {"name": "f1", "value": 0.91249},
                    {"name": "loss", "value": 0.4},
                    {"name": "mlm", "value": 0.95},
                ],
            },
        ),
        (METRICS, "classification", None),  # no data.validation: the step gauge alone, or none
        ("berth_validation_step 0\n", "classification", None),
        ("", "classification", None),
    ],
)
def test_validation_from_metrics(text: str, task: str, expected: dict | None) -> None:
    assert validation_from_metrics(text, task) == expected


def test_validation_changed_ignores_updated_at() -> None:
    new = validation_from_metrics(VALIDATION_METRICS, "tokenClassification")
    assert not validation_changed({**(new or {}), "updatedAt": "x"}, new)
    assert validation_changed(None, new)
    assert validation_changed({**(new or {}), "step": 0}, new)
    assert not validation_changed({"step": 1}, None)


FINAL = (
    '{"step":200,"totalSteps":200,"loss":0.123457,'
    '"validation":{"step":200,"metrics":{"accuracy":0.9375,"loss":0.25}}}'
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            FINAL,
            {
                "progress": {
                    "step": 200,
                    "totalSteps": 200,
                    "loss": 0.123457,
                    "percent": 100,
                    "etaSeconds": 0,
                    "summary": "200/200",
                },
                "validation": {
                    "step": 200,
                    "metrics": [
                        {"name": "accuracy", "value": 0.9375},
                        {"name": "loss", "value": 0.25},
                    ],
                    "summary": "acc 0.938",
                },
            },
        ),
        # no data.validation: progress only
        (
            '{"step":20,"totalSteps":20,"loss":2.5}',
            {
                "progress": {
                    "step": 20,
                    "totalSteps": 20,
                    "loss": 2.5,
                    "percent": 100,
                    "etaSeconds": 0,
                    "summary": "20/20",
                }
            },
        ),
        (FINAL[:60], {}),  # cut short
        ("worker 0 done", {}),  # not JSON: a user's image
        ("", {}),  # an older trainer image writes nothing on success
        (None, {}),
        ('{"steps": 20}', {}),  # JSON of another shape
        ('{"step": 20, "totalSteps": "20"}', {}),
        ('{"step": 20, "totalSteps": 0}', {}),
        ("[1, 2]", {}),
        ('{"totalSteps": 5, "loss": "x", "validation": {"metrics": [1]}}', {
            "progress": {"step": 5, "totalSteps": 5, "percent": 100, "etaSeconds": 0,
                         "summary": "5/5"}
        }),
    ],
)  # fmt: skip
def test_final_figures_from_termination_message(message: str | None, expected: dict) -> None:
    assert final_figures(message, "classification") == expected


def test_final_figures_read_what_the_trainer_writes() -> None:
    metrics = {"validation_exact_match": 0.5, "validation_f1": 0.6251, "validation_loss": 1.0}
    written = trainer_final_figures(30, 30, 0.75, metrics, 30, task="questionAnswering")
    final = final_figures(written, "questionAnswering")
    assert final["progress"]["summary"] == "30/30" and final["progress"]["loss"] == 0.75
    assert final["validation"]["summary"] == "f1 0.625"
    assert [m["name"] for m in final["validation"]["metrics"]] == ["exact_match", "f1", "loss"]


def test_progress_changed_ignores_updated_at() -> None:
    new = progress_from_metrics(METRICS)
    assert not progress_changed({**new, "updatedAt": "x"}, new)
    assert progress_changed(None, new)
    assert not progress_changed(None, {})


def test_metrics_url() -> None:
    assert metrics_url("127.20.0.5") == "http://127.20.0.5:9090/metrics"
    assert metrics_url("fd00::1") == "http://[fd00::1]:9090/metrics"


@pytest.mark.parametrize(
    ("kwargs", "phase", "ready", "reason"),
    [
        ({"phase": "Running"}, "Running", True, None),
        ({"phase": "Pending", "unschedulable": True}, "Pending", False, "Unschedulable"),
        (
            {"phase": "Failed", "exit_code": 137, "reason": "OOMKilled"},
            "Failed",
            False,
            "OOMKilled",
        ),
        ({"phase": "Succeeded", "exit_code": 0}, "Succeeded", False, "Completed"),
    ],
)
def test_observe_pod(kwargs: dict, phase: str, ready: bool, reason: str | None) -> None:
    state = observe_pod(make_pod(make_training(), 1, **kwargs))
    assert state is not None
    assert (state.phase, state.ready, state.reason, state.index) == (phase, ready, reason, 1)


def test_settings_defaults() -> None:
    assert parse_settings([], env={}) == Settings()
    assert Settings().clusterwide


def test_settings_flags_and_env() -> None:
    env = {
        "BERTH_DEFAULT_IMAGE": "e:1",
        "BERTH_METRICS_PORT": "0",
        "BERTH_PROGRESS_INTERVAL": "0.5",
        "BERTH_WATCH_NAMESPACES": "a, b",
    }
    settings = parse_settings([], env=env)
    assert settings.namespaces == ("a", "b") and settings.default_image == "e:1"
    assert settings.metrics_port == 0
    assert settings.progress_interval == 0.5
    flags = parse_settings(
        [
            "--namespace",
            "x",
            "--namespace",
            "y",
            "--default-image",
            "f:2",
            "--metrics-port",
            "9000",
            "--liveness-port",
            "0",
            "--log-level",
            "debug",
        ],
        env=env,
    )
    assert flags.namespaces == ("x", "y") and flags.default_image == "f:2"
    assert (flags.metrics_port, flags.liveness_port, flags.log_level) == (9000, 0, "DEBUG")
    assert parse_settings(["--all-namespaces"], env=env).clusterwide


def test_settings_reject_bad_values() -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--progress-interval", "0"], env={})
    with pytest.raises(SystemExit):
        parse_settings(["--namespace", "a", "--all-namespaces"], env={})


def test_tpu_api_endpoint_settings() -> None:
    defaults = parse_settings([], env={})
    assert (defaults.tpu_api_endpoint, defaults.tpu_api_insecure) == ("tpu.googleapis.com", False)
    env = {"BERTH_TPU_API_ENDPOINT": "127.0.0.1:9", "BERTH_TPU_API_INSECURE": "true"}
    settings = parse_settings([], env=env)
    assert (settings.tpu_api_endpoint, settings.tpu_api_insecure) == ("127.0.0.1:9", True)
    flags = parse_settings(["--tpu-api-endpoint", "h:1", "--tpu-api-insecure"], env={})
    assert (flags.tpu_api_endpoint, flags.tpu_api_insecure) == ("h:1", True)


def test_identity_without_a_passwd_entry() -> None:
    """The images run as uid 65532, which has no passwd entry: kopf's default identity raised
    KeyError there and crashed the operator pod on the real node. A forked child becomes that
    user (the test runs as root) and asks for the identity."""
    import pwd

    from berth_operator.cli import identity

    uid = 65532
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    assert os.getuid() == 0, "needs root to become another user"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        code = 1
        try:
            for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
                os.environ.pop(name, None)
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, identity().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        got = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got.startswith(f"uid{uid}@"), got


@pytest.mark.parametrize(
    ("argv", "env", "on"),
    [([], {}, False), (["--kueue"], {}, True), ([], {"BERTH_KUEUE": "true"}, True)],
)
def test_kueue_setting(argv: list[str], env: dict[str, str], on: bool) -> None:
    assert parse_settings(argv, env=env).kueue is on


def test_local_manifest_takes_the_training_among_other_kinds(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "kueue-queued-training.yaml"
    assert load_manifest(example)["metadata"]["name"] == "bert-base-queued"
    two = tmp_path / "two.yaml"
    training = example.read_text().split("---\n")[-1]
    two.write_text(f"{training}---\n{training}")
    with pytest.raises(ManifestError, match="expected one BertTraining document, found 2"):
        load_manifest(two)
    queue_only = tmp_path / "queue.yaml"
    queue_only.write_text(example.read_text().split("---\n")[2])
    with pytest.raises(ManifestError, match=r"apiVersion/kind: expected berth\.dev/v1alpha1"):
        load_manifest(queue_only)
