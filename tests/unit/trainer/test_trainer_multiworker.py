"""Two real worker processes (MultiWorkerMirroredStrategy on loopback): train together, survive
a SIGKILL by restart + step-exact resume; and on SIGTERM exit retryably, having saved, or not
even started a save that cannot fit the grace period (then the restart resumes from the last
periodic checkpoint)."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from trainer_testlib import (
    TRAINER,
    assert_two_workers_resume_step_exact,
    cli_env,
    json_lines,
    pretraining_config,
    start_workers,
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
    # Each worker streams its own byte-range slice of the corpus files: disjoint, covering all.
    slices = [
        re.findall(r"(\S+)\[(\d+):(\d+)\]", re.search(r"TEXT slice \d/2: (.*)", t).group(1))
        for t in logs
    ]
    covered = sorted((path, int(a), int(b)) for s in slices for path, a, b in s)
    assert all(slices) and len(covered) >= 2
    for (p1, _, end), (p2, start, _) in itertools.pairwise(covered):
        assert p1 != p2 or end == start, covered
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".tmp")) == []


def run_until_sigterm(config: str, run: Path, step: int, **env: str) -> tuple[int, float]:
    """Train until `step` is logged, SIGTERM; the exit code and when the signal was sent."""
    with open(run.with_suffix(".log"), "w") as out:
        proc = subprocess.Popen(
            [*TRAINER, *train_args(config, run.with_suffix(".term"))],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # no orphan if pytest dies
            env=cli_env(**env),
        )
        wait_for_step(run.with_suffix(".log"), step)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60), sent


@pytest.mark.slow
def test_trainer_sigterm_saves_and_exits_preempted_unless_the_save_cannot_fit(tmp_path, corpus):
    cfg = pretraining_config(corpus, tmp_path, steps=100000, logEverySteps=1)
    cfg["checkpoint"] = {"everySteps": 4}
    config = write_config(tmp_path / "cfg.yaml", cfg)
    ckpt = tmp_path / "out" / "checkpoints"

    # A grace period no measured save fits: exit at once, retryably, without starting one.
    code, _ = run_until_sigterm(
        config, tmp_path / "short", 10, BERTH_TERMINATION_GRACE_SECONDS="0.01"
    )
    assert code == ExitCode.PREEMPTED and is_retryable(code)
    lines = json_lines((tmp_path / "short.log").read_text())
    assert not [x for x in lines if x["msg"].startswith("SIGTERM: saved")]
    (skipped,) = [x for x in lines if x["msg"].startswith("SIGTERM: a save takes")]
    periodic = sorted(int(p.name.split("-")[1].split(".")[0]) for p in ckpt.glob("ckpt-*.index"))
    resume = periodic[-1]
    assert resume >= 8 and all(s % 4 == 0 for s in periodic), periodic
    assert re.fullmatch(
        rf"SIGTERM: a save takes ~\d+\.\d s and 0\.0 s of the 0\.01 s grace are left: "
        rf"exiting without saving; the restart resumes from step {resume}",
        skipped["msg"],
    ), skipped["msg"]
    assert "no checkpoint saved" in (tmp_path / "short.term").read_text()

    # The restart resumes from there; with the default grace (30 s) the SIGTERM saves.
    code, sent = run_until_sigterm(config, tmp_path / "run", resume + 2)
    assert code == ExitCode.PREEMPTED
    assert "preempted" in (tmp_path / "run.term").read_text()
    lines = json_lines((tmp_path / "run.log").read_text())
    assert [x["step"] for x in lines if x["msg"] == "resumed"] == [resume]
    # One worker saves after the step the SIGTERM arrived in (or at once, between steps),
    # not after one more: that step is time a pod's grace period would lose.
    ended = [(x["time"], x["step"]) for x in lines if x["msg"] == "train step"]
    (stopped,) = [x["step"] for x in lines if x["msg"].startswith("SIGTERM: saved")]
    before = max(s for t, s in ended if t < sent)
    after = min((s for t, s in ended if t >= sent), default=None)
    assert stopped in (before, after), (sent, ended[-3:])
    assert f'model_checkpoint_path: "ckpt-{stopped}"' in (ckpt / "checkpoint").read_text()


@pytest.mark.slow
def test_trainer_two_workers_agree_to_skip_a_save_one_cannot_fit(tmp_path, corpus):
    """Worker 1's grace period fits no save, worker 0's does: a SIGTERM to worker 1 makes both
    stop at the same step without saving (the vote rides the step's all-reduce)."""
    cfg = pretraining_config(corpus, tmp_path, steps=100000, logEverySteps=1, globalBatchSize=16)
    cfg["checkpoint"] = {"everySteps": 3, "dir": str(tmp_path / "ckpt")}
    config = write_config(tmp_path / "cfg.yaml", cfg)
    grace = ({"BERTH_TERMINATION_GRACE_SECONDS": "30"}, {"BERTH_TERMINATION_GRACE_SECONDS": "0.01"})
    procs = start_workers(config, tmp_path, "w", grace)
    wait_for_step(tmp_path / "w-1.log", 7)
    procs[1].send_signal(signal.SIGTERM)
    assert [p.wait(timeout=60) for p in procs] == [ExitCode.PREEMPTED] * 2
    logs = [json_lines((tmp_path / f"w-{i}.log").read_text()) for i in range(2)]
    skipped = [[x for x in lines if "exiting without saving" in x["msg"]] for lines in logs]
    assert [len(s) for s in skipped] == [1, 1], [lines[-3:] for lines in logs]
    assert skipped[0][0]["msg"].startswith("SIGTERM: a peer worker's save would not fit")
    assert skipped[1][0]["msg"].startswith("SIGTERM: a save takes")
    assert skipped[0][0]["step"] == skipped[1][0]["step"]
    assert skipped[0][0]["resume_step"] == skipped[1][0]["resume_step"] >= 6
    saved = sorted(int(p.name[5:].split(".")[0]) for p in (tmp_path / "ckpt").glob("ckpt-*.index"))
    assert saved[-1] == skipped[0][0]["resume_step"] and all(s % 3 == 0 for s in saved)
