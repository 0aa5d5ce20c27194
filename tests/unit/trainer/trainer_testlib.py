"""Helpers of the trainer tests: config files, and real `berth-trainer` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from berth_operator.local.runner import die_with_parent
from berth_trainer.exit_codes import ExitCode
from berth_trainer.headline import headline

#: A tiny BERT: fast enough for 50 steps in a few seconds on 2 shared cores.
TINY_MODEL = {
    "numLayers": 2,
    "hiddenSize": 64,
    "numHeads": 2,
    "intermediateSize": 128,
    "maxSequenceLength": 32,
    "dropout": 0.0,
}


def pretraining_config(corpus: dict[str, str], out: Path, **training) -> dict:
    return {
        "task": "pretraining",
        "vocabulary": corpus["vocab"],
        "model": dict(TINY_MODEL),
        "data": {"train": corpus["corpus"]},
        "training": {
            "sequenceLength": 16,
            "globalBatchSize": 32,
            "steps": 50,
            "learningRate": 0.002,
            "warmupSteps": 5,
            "maxPredictionsPerSequence": 4,
            "logEverySteps": 5,
            **training,
        },
        "checkpoint": {"everySteps": 25},
        "output": {"dir": str(out / "out")},
    }


def task_of(cfg, vocabulary: list[str] | None = None, prepare: bool = False):
    """The task of `cfg` (a `TrainerConfig` or its wire dict) over `vocabulary` (default: the
    config's file), its data files prepared when `prepare`; `build_model(task)` builds its
    model."""
    from berth_trainer.config import TrainerConfig
    from berth_trainer.data import ExampleEncoder, resolve_files
    from berth_trainer.tasks import for_task
    from berth_trainer.vocab import load_vocabulary

    if isinstance(cfg, dict):
        cfg = TrainerConfig.model_validate(cfg)
    if vocabulary is None:
        vocabulary = load_vocabulary(cfg.vocabulary)
    task = for_task(cfg, ExampleEncoder(cfg, vocabulary))
    if prepare:
        d = cfg.data
        validation = resolve_files(d.validation, "data.validation") if d.validation else []
        task.prepare(resolve_files(d.train, "data.train"), validation)
    return task


def classification_config(corpus: dict[str, str], out: Path, **training) -> dict:
    cfg = pretraining_config(corpus, out, numClasses=2, **training)
    cfg["task"] = "classification"
    cfg["data"] = {
        "train": corpus["classification_train"],
        "validation": corpus["classification_validation"],
        "format": "csv",
    }
    return cfg


#: `berth-trainer` in a fresh process of this interpreter.
TRAINER = [sys.executable, "-m", "berth_trainer"]


def train_args(config: str, termination_log: Path) -> list[str]:
    """`berth-trainer` arguments of a training without a metrics server."""
    return [
        "train",
        "--config",
        config,
        "--metrics-port",
        "0",
        "--termination-log",
        str(termination_log),
    ]


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def json_lines(text: str) -> list[dict]:
    """The trainer's structured log lines (TensorFlow's own stderr noise is skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_cli(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`berth-trainer ARGS` in a fresh process."""
    return subprocess.run(
        [*TRAINER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
        check=False,
    )


def train_to_metrics(cfg: dict, tmp_path: Path) -> dict:
    """Train `cfg` with `berth-trainer train` in a fresh process; its output's metrics.json.

    Also checks the final figures the (single, so chief) worker left in its termination log for
    the operator: one JSON object under Kubernetes' 4096 bytes that agrees with metrics.json and
    holds the task's headline metric whenever `cfg` has data.validation."""
    result = run_cli(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    metrics = json.loads((Path(cfg["output"]["dir"]) / "metrics.json").read_text())
    message = (tmp_path / "term").read_bytes()
    assert len(message) <= 4096, len(message)
    figures = json.loads(message)
    steps = cfg["training"]["steps"]
    assert (figures["step"], figures["totalSteps"]) == (metrics["steps"], steps), figures
    assert figures["loss"] == pytest.approx(metrics["train_loss"], rel=1e-5), figures
    if cfg["data"].get("validation"):
        final = figures["validation"]
        assert final["step"] == steps, final
        for name, value in final["metrics"].items():
            assert value == pytest.approx(metrics[f"validation_{name}"], rel=1e-5), name
        assert headline(cfg.get("task", "pretraining"), final["metrics"]), final
    else:
        assert "validation" not in figures, figures
    return metrics


def failed_training(cfg: dict, tmp_path: Path, code: int = ExitCode.DATA_INVALID) -> str:
    """Train `cfg` expecting exit `code`; the message it wrote to its termination log."""
    result = run_cli(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    return (tmp_path / "term").read_text()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def start_workers(
    config: str, logs: Path, tag: str, envs: tuple[dict[str, str], ...] = ({}, {})
) -> list[subprocess.Popen]:
    """Two workers of `config` logging to `logs/<tag>-<i>.log`; `envs`: more of each one's
    environment."""
    ports = free_ports(2)
    procs = []
    for i in range(2):
        env = cli_env(TF_CONFIG=tf_config(ports, i), BERTH_NUM_THREADS="1", **envs[i])
        out = open(logs / f"{tag}-{i}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(
                [*TRAINER, *train_args(config, logs / f"{tag}-{i}.term")],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # no orphan if pytest dies
                env=env,
            )
        )
    return procs


def wait_for_step(log: Path, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [x["step"] for x in json_lines(log.read_text()) if x["msg"] == "train step"]
        if seen and seen[-1] >= step:
            return seen[-1]
        time.sleep(0.05)
    raise AssertionError(f"{log} never reached step {step}:\n{log.read_text()[-2000:]}")


def losses(log: Path) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in json_lines(log.read_text()) if x["msg"] == "train step"}


def assert_two_workers_resume_step_exact(
    config: str, tmp_path: Path, steps: int, kill_at: int, every: int, log_every: int = 5
) -> list[str]:
    """Two real workers train `config` (checkpoint.everySteps `every`); worker 1 is SIGKILLed
    past step `kill_at`; the survivor exits retryably; a restart of both resumes from the
    last checkpoint and finishes with identical losses on both workers. Returns the first
    run's logs."""
    import signal

    from berth_trainer.exit_codes import is_retryable

    first = start_workers(config, tmp_path, "first")
    killed_at = wait_for_step(tmp_path / "first-1.log", kill_at)
    first[1].send_signal(signal.SIGKILL)
    survivor_code = first[0].wait(timeout=120)
    first[1].wait(timeout=30)
    assert killed_at < steps
    assert survivor_code != 0 and is_retryable(survivor_code), (
        survivor_code,
        (tmp_path / "first-0.log").read_text()[-1500:],
    )
    first_losses = [losses(tmp_path / f"first-{i}.log") for i in range(2)]
    both = first_losses[0].keys() & first_losses[1].keys()
    assert both and all(first_losses[0][s] == first_losses[1][s] for s in both)

    second = start_workers(config, tmp_path, "second")
    codes = [p.wait(timeout=300) for p in second]
    assert codes == [0, 0], (codes, (tmp_path / "second-0.log").read_text()[-2000:])
    for i in range(2):
        lines = json_lines((tmp_path / f"second-{i}.log").read_text())
        (resumed,) = [x for x in lines if x["msg"] == "resumed"]
        assert kill_at - every <= resumed["step"] <= killed_at and resumed["step"] % every == 0
        (finished,) = [x for x in lines if x["msg"] == "finished"]
        assert finished["steps"] == steps
        seen = [x["step"] for x in lines if x["msg"] == "train step"]
        assert seen[0] == resumed["step"] + log_every and seen[-1] == steps
    assert losses(tmp_path / "second-0.log") == losses(tmp_path / "second-1.log")
    return [(tmp_path / f"first-{i}.log").read_text() for i in range(2)]


def assert_task_resumes_on_two_workers(cfg: dict, tmp_path: Path) -> None:
    """A fine-tuning task's `cfg` for 40 steps (checkpoints every 10, no validation) through
    `assert_two_workers_resume_step_exact`; its examples are DATA-sharded, every 2nd each."""
    cfg = {
        **cfg,
        "data": {k: v for k, v in cfg["data"].items() if k != "validation"},
        "training": {**cfg["training"], "steps": 40, "globalBatchSize": 16, "logEverySteps": 5},
        "checkpoint": {"everySteps": 10, "dir": str(tmp_path / "ckpt")},
    }
    config = write_config(tmp_path / "cfg.yaml", cfg)
    logs = assert_two_workers_resume_step_exact(config, tmp_path, 40, kill_at=25, every=10)
    assert all("DATA shard" in log for log in logs)
