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

from berth_trainer.config import DataFormat
from berth_trainer.modeling import pooled_classifier
from berth_trainer.tasks import Encoded, FineTuning, bad_row, predict


class Regression(FineTuning):
    formats = (DataFormat.CSV, DataFormat.TSV, DataFormat.JSONL)
    uses_pooler = True

    def read(self, files, field, labels):
        from berth_trainer.data import read_rows

        d = self.cfg.data
        columns = [d.text_field] + ([d.text_pair_field] if d.text_pair_field else [])
        texts: list[list[str]] = [[] for _ in columns]
        values: list[float] = []
        for where, row in read_rows(files, d.format, [*columns, d.label_field], field):
            try:
                value = float(row[d.label_field])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise bad_row(
                    field, where, f"{d.label_field} {row[d.label_field]!r} is not a finite number"
                )
            for column, out in zip(columns, texts, strict=True):
                out.append(str(row[column]))
            values.append(value)
        features = encode_batches(self.encoder, texts)
        gold = np.asarray(values, np.float32)
        return Encoded(features, {"value": gold}, gold), None

    def build(self, backbone, labels):
        inputs, score = pooled_classifier(backbone, self.cfg.training.sequence_length, 1)
        score = keras.layers.Reshape((), dtype="float32", name="score")(score)
        return keras.Model(inputs, {"score": score}, name="bert_regression")

    def loss(self, outputs, labels):
        error = tf.cast(outputs["score"], tf.float32) - labels["value"]
        return tf.square(error), {}

    def evaluate(self, model, encoded, batch_size):
        scores = predict(model, encoded.features, batch_size)["score"]
        return correlations(scores, encoded.references)

    def serve(self, model, archive, labels):
        def score(*texts):
            return {"score": model(self.encoder.encode_texts(*texts), training=False)["score"]}

        text = tf.TensorSpec([None], tf.string, name="text")
        if self.cfg.data.text_pair_field:
            pair = tf.TensorSpec([None], tf.string, name="text_pair")
            archive.add_endpoint("serving_default", score, input_signature=[text, pair])
        else:
            archive.add_endpoint("serving_default", score, input_signature=[text])


def encode_batches(encoder, columns: list[list[str]], batch: int = 1024) -> dict[str, np.ndarray]:
    """`encoder.encode_texts` over Python strings (one list per segment), in batches."""
    specs = [tf.TensorSpec([None], tf.string) for _ in columns]
    encode = tf.function(encoder.encode_texts, input_signature=specs)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(columns[0]), batch):
        out = encode(*(tf.constant(c[start : start + batch]) for c in columns))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def correlations(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (ties get their mean rank) and the mean squared error;
    a constant prediction correlates 0.

    >>> m = correlations(np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 4.0, 6.0, 7.0]))
    >>> {k: round(v, 4) for k, v in m.items()}
    {'pearson': 0.9463, 'spearman': 1.0, 'mse': 4.5}
    """
    predicted, gold = predicted.astype(np.float64), gold.astype(np.float64)
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
