"""Sentence-pair regression (STS-B style): correlations, a tiny model learning a synthetic
score through the CLI, its export scoring raw strings in a fresh process, two workers with a
step-exact resume, and bad rows named by file and line."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from trainer_testlib import (
    TINY_MODEL,
    assert_two_workers_resume_step_exact,
    cli_env,
    run_cli,
    train_args,
    write_config,
)

from berth_trainer.exit_codes import ExitCode
from berth_trainer.tasks.regression import correlations

WORDS = ["good", "red", "blue", "green", "cat", "dog", "sun", "tree"]


def _text(rng: random.Random, goods: int) -> str:
    words = ["good"] * goods + [rng.choice(WORDS[1:]) for _ in range(4 - goods)]
    rng.shuffle(words)
    return " ".join(words)


def _write_data(directory, n: int, seed: int) -> str:
    """Pairs whose score is how many times "good" occurs in both texts (0-4)."""
    rng = random.Random(seed)
    rows = ["text,pair,score"]
    for _ in range(n):
        a, b = rng.randint(0, 2), rng.randint(0, 2)
        rows.append(f"{_text(rng, a)},{_text(rng, b)},{a + b}")
    path = directory / f"sts-{seed}.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _config(tmp_path, **training) -> dict:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return {
        "task": "regression",
        "vocabulary": str(vocab),
        "model": dict(TINY_MODEL),
        "data": {
            "train": _write_data(tmp_path, 512, 1),
            "validation": _write_data(tmp_path, 128, 2),
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
    result = run_cli(
        train_args(write_config(tmp_path / "cfg.yaml", _config(tmp_path)), tmp_path / "t")
    )
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["validation_pearson"] >= 0.9, metrics
    assert metrics["validation_spearman"] >= 0.9, metrics
    assert metrics["validation_pearson"] > metrics["initial_validation_pearson"] + 0.3, metrics
    hf = json.loads((tmp_path / "out" / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForSequenceClassification"] and hf["num_labels"] == 1

    script = f"""
import json, tensorflow as tf, tensorflow_text
serve = tf.saved_model.load({str(tmp_path / "out" / "saved_model")!r}).signatures["serving_default"]
out = serve(text=tf.constant(["good good red cat", "red blue cat dog"]),
            text_pair=tf.constant(["good good sun tree", "cat dog sun tree"]))
print(json.dumps(out["score"].numpy().tolist()))
"""
    served = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), check=True
    )
    high, low = json.loads(served.stdout.strip().splitlines()[-1])
    assert abs(high - 4) < 0.75 and abs(low) < 0.75, (high, low)


@pytest.mark.slow
def test_regression_two_workers_resume_step_exact(tmp_path):
    cfg = _config(tmp_path, steps=40, globalBatchSize=16)
    cfg["data"].pop("validation")
    cfg["checkpoint"] = {"everySteps": 10, "dir": str(tmp_path / "ckpt")}
    logs = assert_two_workers_resume_step_exact(
        write_config(tmp_path / "cfg.yaml", cfg), tmp_path, 40, kill_at=25, every=10
    )
    assert all("DATA shard" in log for log in logs)


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
    result = run_cli(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    assert result.returncode == ExitCode.DATA_INVALID, result.stderr[-2000:]
    assert message.format(path=path) in (tmp_path / "term").read_text()
