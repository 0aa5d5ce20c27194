"""A worker SIGKILLed in the middle of writing a checkpoint (a pod's grace period ran out
during its save-on-SIGTERM) resumes from the previous complete checkpoint, exactly: nothing
torn is restored or left behind, no step is skipped; and a newest checkpoint torn on disk is
passed over for the one before it. The periodic checkpoint is written in the background
(`checkpoint.background`), from a snapshot, while training goes on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from trainer_testlib import (
    TINY_MODEL,
    TRAINER,
    classification_config,
    cli_env,
    json_lines,
    run_cli,
    train_args,
    write_config,
)

from berth_operator.local.runner import die_with_parent

STEPS = 20
EVERY = 10
#: Wider than TINY_MODEL so a save writes ~19 MB (weights and Adam slots): long enough for a
#: poll of the directory to kill the worker while its files are half written.
MODEL = {**TINY_MODEL, "hiddenSize": 256, "numHeads": 4, "intermediateSize": 1024}


def named_checkpoints(ckpt: Path) -> tuple[str | None, list[str]]:
    """The `checkpoint` state file's latest and listed checkpoints (its text proto)."""
    try:
        text = (ckpt / "checkpoint").read_text()
    except FileNotFoundError:
        return None, []
    latest = re.search(r'^model_checkpoint_path: "(.*)"', text, re.M)
    return latest and latest[1], re.findall(r'^all_model_checkpoint_paths: "(.*)"', text, re.M)


def kill_mid_save(config: str, run: Path, ckpt: Path) -> str | None:
    """Train until checkpoint `EVERY` is complete, SIGTERM (the worker saves at once), SIGKILL
    the moment that save's `ckpt-N_temp/` appears. Returns the torn checkpoint's name, or None
    if the kill missed the write."""
    log = run / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*TRAINER, *train_args(config, run / "first.term")],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # no orphan if pytest dies
            env=cli_env(),
        )
    try:
        deadline = time.monotonic() + 120
        while named_checkpoints(ckpt)[0] != f"ckpt-{EVERY}":
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not (temps := [n for n in os.listdir(ckpt) if n.endswith("_temp")]):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
    finally:
        proc.kill()  # at once: the save has just begun writing
        proc.wait()
    (torn,) = [t.removesuffix("_temp") for t in temps]
    missed = named_checkpoints(ckpt)[0] != f"ckpt-{EVERY}" or not (ckpt / temps[0]).exists()
    return None if missed else torn


@pytest.mark.slow
def test_trainer_sigkill_during_save_resumes_from_last_complete_checkpoint(tmp_path, corpus):
    for attempt in range(3):
        run = tmp_path / f"try-{attempt}"
        run.mkdir()
        ckpt = run / "ckpt"
        cfg = classification_config(corpus, run, steps=STEPS, logEverySteps=1)
        cfg["model"] = dict(MODEL)
        cfg["data"].pop("validation")
        # Checkpoint EVERY is written in the background while steps go on updating the
        # variables: the resumed losses below show it holds step EVERY's state.
        cfg["checkpoint"] = {"everySteps": EVERY, "dir": str(ckpt), "background": True}
        config = write_config(run / "cfg.yaml", cfg)
        if torn := kill_mid_save(config, run, ckpt):
            break
    else:
        pytest.fail("3 SIGKILLs in a row missed the checkpoint write")
    assert torn != f"ckpt-{EVERY}"
    first = {
        x["step"]: x["loss"] for x in json_lines((run / "first.log").read_text()) if "loss" in x
    }

    # The same command again, as the restarted pod runs it.
    second = run_cli(train_args(config, run / "second.term"))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    lines = json_lines(second.stdout)
    (removed,) = [x for x in lines if x["msg"] == "removed a torn checkpoint save"]
    assert f"{torn}_temp" in removed["files"]
    (resumed,) = [x for x in lines if x["msg"] == "resumed"]
    assert resumed["step"] == EVERY
    steps = [x for x in lines if x["msg"] == "train step"]
    assert [x["step"] for x in steps] == list(range(EVERY + 1, STEPS + 1))
    # Weights, Adam slots, schedule and data position are checkpoint EVERY's: the steps the
    # killed run did after it come out the same again (classification draws no random masks).
    again = {x["step"]: x["loss"] for x in steps if x["step"] in first}
    assert len(again) >= 1 and again == pytest.approx({s: first[s] for s in again}, rel=1e-5)
    assert json.loads((run / "out" / "metrics.json").read_text())["steps"] == STEPS
    latest, listed = named_checkpoints(ckpt)
    assert latest == f"ckpt-{STEPS}"
    left = {re.sub(r"\.(index|data-.*)$", "", n) for n in os.listdir(ckpt) if n.startswith("ckpt")}
    assert left == set(listed), sorted(os.listdir(ckpt))

    # The newest checkpoint torn on disk (a node that lost power before its page cache was
    # written: TensorFlow does not fsync): resume from the one before, saying so.
    data = next(ckpt.glob(f"ckpt-{STEPS}.data-*"))
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    third = run_cli(train_args(config, run / "third.term"))
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-2000:]
    lines = json_lines(third.stdout)
    (skipped,) = [x for x in lines if x["msg"] == "checkpoint unreadable, trying the one before"]
    assert skipped["checkpoint"].endswith(f"ckpt-{STEPS}")
    assert [x["step"] for x in lines if x["msg"] == "resumed"] == [EVERY]
    assert [x["steps"] for x in lines if x["msg"] == "finished"] == [STEPS]
