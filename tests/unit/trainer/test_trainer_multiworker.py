"""Two real worker processes (MultiWorkerMirroredStrategy on loopback): train together, survive
a SIGKILL by restart + step-exact resume, and save then exit retryably on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from trainer_testlib import (
    TRAINER,
    cli_env,
    free_ports,
    json_lines,
    pretraining_config,
    tf_config,
    train_args,
    write_config,
)

from berth_operator.local.runner import die_with_parent
from berth_trainer.exit_codes import ExitCode, is_retryable

STEPS = 120


def _start_workers(config: str, logs: Path, tag: str) -> list[subprocess.Popen]:
    ports = free_ports(2)
    procs = []
    for i in range(2):
        env = cli_env(TF_CONFIG=tf_config(ports, i), BERTH_NUM_THREADS="1")
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


def _wait_for_step(log: Path, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [x["step"] for x in json_lines(log.read_text()) if x["msg"] == "train step"]
        if seen and seen[-1] >= step:
            return seen[-1]
        time.sleep(0.05)
    raise AssertionError(f"{log} never reached step {step}:\n{log.read_text()[-2000:]}")


def _losses(log: Path) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in json_lines(log.read_text()) if x["msg"] == "train step"}


@pytest.mark.slow
def test_trainer_two_workers_kill_and_resume_step_exact(tmp_path, corpus):
    cfg = pretraining_config(corpus, tmp_path, steps=STEPS, globalBatchSize=16)
    cfg["checkpoint"] = {"everySteps": 20, "dir": str(tmp_path / "ckpt")}
    config = write_config(tmp_path / "cfg.yaml", cfg)

    first = _start_workers(config, tmp_path, "first")
    killed_at = _wait_for_step(tmp_path / "first-1.log", 45)
    first[1].send_signal(signal.SIGKILL)
    survivor_code = first[0].wait(timeout=120)
    first[1].wait(timeout=30)
    assert killed_at < STEPS
    assert survivor_code != 0 and is_retryable(survivor_code), (
        survivor_code,
        (tmp_path / "first-0.log").read_text()[-1500:],
    )

    logs = [(tmp_path / f"first-{i}.log").read_text() for i in range(2)]
    shards = [re.search(r"FILE shard \d/2: \[(.*?)\]", text).group(1) for text in logs]
    assert shards[0] != shards[1] and not set(shards[0].split(", ")) & set(shards[1].split(", "))
    both = _losses(tmp_path / "first-0.log").keys() & _losses(tmp_path / "first-1.log").keys()
    assert both and all(
        _losses(tmp_path / "first-0.log")[s] == _losses(tmp_path / "first-1.log")[s] for s in both
    )

    second = _start_workers(config, tmp_path, "second")
    assert [p.wait(timeout=240) for p in second] == [0, 0]
    for i in range(2):
        lines = json_lines((tmp_path / f"second-{i}.log").read_text())
        (resumed,) = [x for x in lines if x["msg"] == "resumed"]
        assert 40 <= resumed["step"] <= killed_at and resumed["step"] % 20 == 0
        (finished,) = [x for x in lines if x["msg"] == "finished"]
        assert finished["steps"] == STEPS
        steps = [x["step"] for x in lines if x["msg"] == "train step"]
        assert steps[0] == resumed["step"] + 5 and steps[-1] == STEPS
    assert _losses(tmp_path / "second-0.log") == _losses(tmp_path / "second-1.log")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".tmp")) == []


@pytest.mark.slow
def test_trainer_sigterm_saves_and_exits_preempted(tmp_path, corpus):
    cfg = pretraining_config(corpus, tmp_path, steps=100000)
    cfg["checkpoint"] = {"everySteps": 100000}
    config = write_config(tmp_path / "cfg.yaml", cfg)
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*TRAINER, *train_args(config, tmp_path / "term")],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # no orphan if pytest dies
            env=cli_env(),
        )
        _wait_for_step(log, 10)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == ExitCode.PREEMPTED and is_retryable(code)
    assert "preempted" in (tmp_path / "term").read_text()
    saved = sorted((tmp_path / "out" / "checkpoints").glob("ckpt-*.index"))
    assert len(saved) == 1 and int(saved[0].name.split("-")[1].split(".")[0]) >= 10
