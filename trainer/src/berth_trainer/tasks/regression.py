"""Sentence(-pair) regression, e.g. STS-B similarity: a number per text or pair.

Data: csv, tsv or jsonl rows with `data.textField` (and `data.textPairField`) and a numeric
`data.labelField`. Model: the pooled output, dropout and a one-unit Dense named `classifier`
(Hugging Face's `BertForSequenceClassification` with `num_labels` 1). Loss: squared error.
Validation: Pearson and Spearman correlation and the MSE. Export: `text`[, `text_pair`] →
`score`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import Task
from berth_trainer.tasks.base import Encoded, bad_row
from berth_trainer.tasks.classification import SentenceTask


class Regression(SentenceTask):
    name = Task.REGRESSION

    def parse(self, row, field):
        try:
            value = float(row.label)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            label_field = self.cfg.data.label_field
            raise bad_row(
                field,
                row.where,
                f"{label_field} {row.label!r} is not a finite number",
            )
        row.label = value
        return row

    def encode(self, examples, field):
        gold = np.asarray([r.label for r in examples], np.float32)
        return Encoded(self.features(examples), {"value": gold}, gold)

    def build(self, backbone):
        inputs, score = self.classifier(backbone, 1)
        score = keras.layers.Reshape((), dtype="float32", name="score")(score)
        return keras.Model(inputs, {"score": score}, name="bert_regression")

    def loss(self, outputs, labels):
        error = tf.cast(outputs["score"], tf.float32) - labels["value"]
        return tf.square(error), {}

    def score(self, model, encoded, outputs):
        return outputs["score"], encoded.references

    def metrics(self, scores):
        return correlations(*(np.concatenate(parts) for parts in zip(*scores, strict=True)))

    def serve(self, model, archive):
        self.endpoint(
            archive,
            lambda *texts: {
                "score": model(self.encoder.encode_texts(*texts), training=False)["score"]
            },
        )

    def huggingface_config(self):
        return {"num_labels": 1, "problem_type": "regression"}


def correlations(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (ties get their mean rank) and the mean squared error;
    a constant prediction correlates 0. A NaN or infinite prediction (a diverged model) makes
    all three NaN: it has no rank, and must not read as a perfect or a null correlation.

    >>> m = correlations(np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 4.0, 6.0, 7.0]))
    >>> {k: round(v, 4) for k, v in m.items()}
    {'pearson': 0.9463, 'spearman': 1.0, 'mse': 4.5}
    >>> correlations(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))
    {'pearson': nan, 'spearman': nan, 'mse': nan}
    """
    predicted, gold = predicted.astype(np.float64), gold.astype(np.float64)
    if not np.isfinite(predicted).all():
        return dict.fromkeys(("pearson", "spearman", "mse"), math.nan)
    return {
        "pearson": _pearson(predicted, gold),
        "spearman": _pearson(_ranks(predicted), _ranks(gold)),
        "mse": float(np.mean((predicted - gold) ** 2)),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):  # ties share their mean rank
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


TASK_CLASS = Regression
