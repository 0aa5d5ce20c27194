"""Several optimizer steps per tf.function call (the TPU loop) keep every step boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_testlib import json_lines, pretraining_config, run_cli, write_config

pytestmark = pytest.mark.slow


def train(tmp_path: Path, corpus: dict[str, str], **training: object) -> tuple[list[dict], dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = pretraining_config(corpus, tmp_path, steps=22, logEverySteps=5, **training)
    cfg["checkpoint"] = {"everySteps": 10, "dir": str(tmp_path / "ckpt")}
    result = run_cli(
        ["train", "--config", write_config(tmp_path / "cfg.yaml", cfg), "--metrics-port", "0"]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = json_lines(result.stdout)
    assert lines[0]["msg"] == "starting"
    assert lines[0]["steps_per_execution"] == training.get("stepsPerExecution", 1)
    steps = [x for x in lines if x["msg"] == "train step"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    return steps, metrics


def test_five_steps_per_call_keep_boundaries_and_train_identically(
    tmp_path: Path, corpus: dict[str, str]
) -> None:
    steps, metrics = train(tmp_path, corpus, stepsPerExecution=5)
    # 22 is not a multiple of 5: steps 21 and 22 run one per call, and are still logged/saved.
    assert [s["step"] for s in steps] == [5, 10, 15, 20, 22]
    assert metrics["steps"] == 22
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*.index")) == [
        "ckpt-10.index",
        "ckpt-20.index",
        "ckpt-22.index",
    ]
    # The loss reported per call is the mean over its steps, and it trains.
    assert 0 < steps[-1]["loss"] < steps[0]["loss"] < 10
    # Runs are reproducible (training.seed), so one step per call must reach the very same
    # state: step 22 runs alone in both and sees the same weights and batch.
    single_steps, single = train(tmp_path / "single", corpus)
    assert single_steps[-1]["step"] == 22
    assert steps[-1]["loss"] == pytest.approx(single_steps[-1]["loss"], rel=1e-5)
    assert metrics["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)


def test_steps_per_execution_must_divide_the_boundaries(
    tmp_path: Path, corpus: dict[str, str]
) -> None:
    cfg = pretraining_config(corpus, tmp_path, logEverySteps=5, stepsPerExecution=3)
    result = run_cli(["train", "--config", write_config(tmp_path / "cfg.yaml", cfg)])
    assert result.returncode == 2
    assert "training.stepsPerExecution" in result.stdout + result.stderr
