"""Really train tiny models through the CLI entry point, then query the export in a new process."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf
from trainer_testlib import (
    classification_config,
    json_lines,
    pretraining_config,
    run_cli,
    train_args,
    write_config,
)

from berth_trainer.cli import main


def _train(tmp_path, cfg: dict, capsys: pytest.CaptureFixture) -> list[dict]:
    code = main(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    lines = json_lines(capsys.readouterr().out)
    assert code == 0, lines[-3:]
    return [x for x in lines if x["msg"] == "train step"]


@pytest.mark.slow
def test_trainer_pretraining_loss_decreases_and_export_fills_mask(tmp_path, corpus, capsys):
    steps = _train(
        tmp_path, pretraining_config(corpus, tmp_path, steps=80, sequenceLength=32), capsys
    )
    assert [s["step"] for s in steps] == list(range(5, 85, 5))
    first, last = steps[0]["loss"], sum(s["loss"] for s in steps[-3:]) / 3
    assert last < 0.8 * first, [s["loss"] for s in steps]
    out = tmp_path / "out"
    for name in ("model.keras", "saved_model", "vocab.txt", "config.json", "metrics.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "metrics.json").read_text())["steps"] == 80
    assert list((out / "tensorboard").iterdir())

    result = run_cli(["predict", "--model", str(out), "the cat [MASK] the ball ."], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout[result.stdout.index("[") :])
    (mask,) = answer[0]["masks"]
    assert mask["position"] == 3  # [CLS] the cat [MASK]: the literal [MASK] stayed one token
    assert len(mask["top_k"]) == 5


@pytest.mark.slow
def test_trainer_classification_learns_and_export_classifies(tmp_path, corpus, capsys):
    cfg = classification_config(corpus, tmp_path, steps=60, learningRate=0.001)
    steps = _train(tmp_path, cfg, capsys)
    assert sum(s["loss"] for s in steps[-3:]) / 3 < 0.8 * steps[0]["loss"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["validation_accuracy"] > 0.9, metrics
    # Exit 0 leaves the final figures in the termination log, for the operator's status.
    figures = json.loads((tmp_path / "term").read_text())
    assert figures["step"] == figures["totalSteps"] == figures["validation"]["step"] == 60
    final = figures["validation"]["metrics"]
    assert final["accuracy"] == pytest.approx(metrics["validation_accuracy"], rel=1e-5)
    # TensorBoard: validation/* before the first step and after the last, not again in final/.
    tags: dict[str, list[int]] = {}
    for path in (tmp_path / "out" / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags["validation/accuracy"] == [0, 60], tags
    assert "train/loss" in tags and not [t for t in tags if t.startswith("final/valid")], tags

    texts = ["the day was very great and happy", "it felt so awful really sad"]
    result = run_cli(["predict", "--model", str(tmp_path / "out"), *texts], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout[result.stdout.index("[") :])
    assert [a["label"] for a in answer] == ["positive", "negative"]
