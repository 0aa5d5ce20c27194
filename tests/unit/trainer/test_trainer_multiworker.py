"""Two real worker processes (MultiWorkerMirroredStrategy on loopback): train together, survive
a SIGKILL by restart + step-exact resume, and save then exit retryably on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
from trainer_testlib import (
    TRAINER,
    assert_two_workers_resume_step_exact,
    cli_env,
    pretraining_config,
    train_args,
    wait_for_step,
    write_config,
)

from berth_operator.local.runner import die_with_parent
from berth_trainer.exit_codes import ExitCode, is_retryable

STEPS = 120


@pytest.mark.slow
def test_trainer_two_workers_kill_and_resume_step_exact(tmp_path, corpus):
    cfg = pretraining_config(corpus, tmp_path, steps=STEPS, globalBatchSize=16)
    cfg["checkpoint"] = {"everySteps": 20, "dir": str(tmp_path / "ckpt")}
    config = write_config(tmp_path / "cfg.yaml", cfg)

    logs = assert_two_workers_resume_step_exact(config, tmp_path, STEPS, kill_at=45, every=20)
    shards = [re.search(r"FILE shard \d/2: \[(.*?)\]", text).group(1) for text in logs]
    assert shards[0] != shards[1] and not set(shards[0].split(", ")) & set(shards[1].split(", "))
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
        wait_for_step(log, 10)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == ExitCode.PREEMPTED and is_retryable(code)
    assert "preempted" in (tmp_path / "term").read_text()
    saved = sorted((tmp_path / "out" / "checkpoints").glob("ckpt-*.index"))
    assert len(saved) == 1 and int(saved[0].name.split("-")[1].split(".")[0]) >= 10
