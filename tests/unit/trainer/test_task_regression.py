"""Sentence-pair regression (STS-B style): correlations, a tiny model learning a synthetic
score through the CLI, its export scoring raw strings in a fresh process, two workers with a
step-exact resume, and bad rows named by file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainer_testlib import (
    TINY_MODEL,
    assert_task_resumes_on_two_workers,
    failed_training,
    run_cli,
    train_to_metrics,
)

from berth_trainer.exit_codes import ExitCode
from berth_trainer.tasks.regression import correlations
from tests.support.tiny import write_pair_scores


def _config(tmp_path, **training) -> dict:
    train = write_pair_scores(tmp_path, 512, 1)
    return {
        "task": "regression",
        "vocabulary": str(tmp_path / "vocab.txt"),
        "model": dict(TINY_MODEL),
        "data": {
            "train": train,
            "validation": write_pair_scores(tmp_path, 128, 2),
            "format": "csv",
            "textPairField": "pair",
            "labelField": "score",
        },
        "training": {
            "sequenceLength": 16,
            "globalBatchSize": 32,
            "steps": 150,
            "learningRate": 0.002,
            "warmupSteps": 10,
            "logEverySteps": 5,
            **training,
        },
        "checkpoint": {"everySteps": 50},
        "output": {"dir": str(tmp_path / "out")},
    }


@pytest.mark.parametrize(
    ("predicted", "gold", "pearson", "spearman"),
    [
        ([1, 2, 3], [2, 4, 6], 1.0, 1.0),
        ([1, 2, 3], [6, 4, 2], -1.0, -1.0),
        ([1, 2, 3, 4], [1, 4, 9, 16], 0.984, 1.0),  # monotone, not linear
        ([1, 1, 2], [1, 2, 3], 0.866, 0.866),  # a tie shares its mean rank
        ([5, 5, 5], [1, 2, 3], 0.0, 0.0),  # a constant prediction correlates 0
    ],
)
def test_correlations(predicted, gold, pearson, spearman):
    m = correlations(np.array(predicted, float), np.array(gold, float))
    assert m["pearson"] == pytest.approx(pearson, abs=1e-3)
    assert m["spearman"] == pytest.approx(spearman, abs=1e-3)
    assert m["mse"] == pytest.approx(np.mean((np.array(predicted) - np.array(gold)) ** 2))


@pytest.mark.slow
def test_regression_learns_scores_and_export_scores_raw_pairs(tmp_path):
    metrics = train_to_metrics(_config(tmp_path), tmp_path)
    assert metrics["validation_pearson"] >= 0.9, metrics
    assert metrics["validation_spearman"] >= 0.9, metrics
    assert metrics["validation_pearson"] > metrics["initial_validation_pearson"] + 0.3, metrics
    hf = json.loads((tmp_path / "out" / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForSequenceClassification"] and hf["num_labels"] == 1

    pairs = [
        {"text": "good good red cat", "text_pair": "good good sun tree"},
        {"text": "red blue cat dog", "text_pair": "cat dog sun tree"},
    ]
    served = run_cli(["predict", "--model", str(tmp_path / "out"), *map(json.dumps, pairs)])
    assert served.returncode == 0, served.stderr[-2000:]
    answer = json.loads(served.stdout[served.stdout.index("[") :])
    assert [a["input"] for a in answer] == [json.dumps(p) for p in pairs]
    high, low = (a["score"] for a in answer)
    assert abs(high - 4) < 0.75 and abs(low) < 0.75, (high, low)
    refused = run_cli(["predict", "--model", str(tmp_path / "out"), "good good red cat"])
    assert refused.returncode == ExitCode.CONFIG_INVALID
    assert "takes the inputs text, text_pair" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_regression_two_workers_resume_step_exact(tmp_path):
    assert_task_resumes_on_two_workers(_config(tmp_path), tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "good red cat dog,sun tree,high",
            "data.train: {path}:3: score 'high' is not a finite number",
        ),
        (
            "good red cat dog,sun tree,nan",
            "data.train: {path}:3: score 'nan' is not a finite number",
        ),
        ("good red cat dog,sun tree", "{path}:3: malformed row: expected 3 fields"),
    ],
)
def test_regression_bad_rows_name_file_and_line(tmp_path, row, message):
    cfg = _config(tmp_path)
    path = tmp_path / "bad.csv"
    path.write_text(f"text,pair,score\ngood,red,1\n{row}\n")
    cfg["data"] = {**cfg["data"], "train": str(path)}
    cfg["data"].pop("validation")
    message_text = failed_training(cfg, tmp_path)
    assert message.format(path=path) in message_text
