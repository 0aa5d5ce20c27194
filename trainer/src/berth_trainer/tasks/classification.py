"""Sentence(-pair) classification, e.g. sentiment or entailment: a label per text or pair.

Data: csv, tsv or jsonl rows with `data.textField` (and `data.textPairField`) and
`data.labelField`. Label names are learned from data.train (numbers 0..N-1 when all are
digits, else sorted names) and padded to `training.numClasses`. Model: the pooled output,
dropout and a Dense named `classifier` (Google's `output_weights`, Hugging Face's
`BertForSequenceClassification`). Loss: cross-entropy. Validation: accuracy. Export: `text`[,
`text_pair`] → `probabilities`, `label_id`, `label`.

`SentenceTask` is what classification and regression share: the rows, their encoding, the
pooled head and the serving signature's inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import DataFormat, Task
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.tasks.base import Encoded, ExampleTask, Head, label_loss
from berth_trainer.textfiles import rows

CLASSIFIER = Head(
    "classifier",
    {
        "output_weights": ("classifier", "kernel", "T"),
        "output_bias": ("classifier", "bias", ""),
    },
    {"classifier.weight": "output_weights", "classifier.bias": "output_bias"},
)


@dataclasses.dataclass
class Row:
    """One example: its texts (one per segment), its label as written and where it is."""

    texts: tuple[str, ...]
    label: str
    where: str


class SentenceTask(ExampleTask):
    """A label (or number) per text or text pair, from the pooled `[CLS]` output."""

    formats = (DataFormat.CSV, DataFormat.TSV, DataFormat.JSONL)
    heads = (CLASSIFIER,)
    pooled = True
    architecture = "BertForSequenceClassification"

    def examples(self, files, field):
        d = self.cfg.data
        columns = [d.text_field] + ([d.text_pair_field] if d.text_pair_field else [])
        for where, row in rows(files, d.format, [*columns, d.label_field], field):
            yield self.parse(
                Row(tuple(str(row[c]) for c in columns), row[d.label_field], where), field
            )

    def parse(self, row: Row, field: str) -> Row:
        """Check one row's label (a `bad_row` naming `field` if it is not one)."""
        return row

    def features(self, examples: list[Row]) -> dict[str, np.ndarray]:
        """The packed texts of `examples`."""
        columns = zip(*(r.texts for r in examples), strict=True)
        return self.encoder.encode_strings(*map(list, columns))

    def classifier(self, backbone: keras.Model, units: int) -> tuple[dict, keras.KerasTensor]:
        """The named text inputs → the pooled `[CLS]` output → dropout → `Dense(units)` named
        `classifier`."""
        from berth_trainer.modeling import text_inputs

        inputs = text_inputs(self.cfg.training.sequence_length)
        pooled = keras.layers.Dropout(
            backbone.dropout, dtype=backbone.dtype_policy, name="pooled_dropout"
        )(backbone(inputs)["pooled_output"])
        logits = keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name=self.head.layer,
        )(pooled)
        return inputs, logits

    def endpoint(self, archive, fn: Callable) -> None:
        """Serve `fn(texts...)` with one string input per segment: `text`[, `text_pair`]."""
        text = tf.TensorSpec([None], tf.string, name="text")
        if self.cfg.data.text_pair_field:
            pair = tf.TensorSpec([None], tf.string, name="text_pair")
            archive.add_endpoint(
                "serving_default", lambda text, text_pair: fn(text, text_pair), [text, pair]
            )
        else:
            archive.add_endpoint("serving_default", lambda text: fn(text), [text])


class Classification(SentenceTask):
    name = Task.CLASSIFICATION

    def parse(self, row, field):
        row.label = str(row.label).strip()
        return row

    def labels_of(self, example):
        return ((example.label, example.where),)

    def name_labels(self, seen):
        if all(v.isdigit() for v in seen):
            names = [str(i) for i in range(max(int(v) for v in seen) + 1)]
        else:
            names = sorted(seen)
        classes = self.cfg.training.num_classes or 0
        if len(names) > classes:
            raise TrainerError(
                ExitCode.DATA_INVALID,
                f"data.train: {len(names)} distinct labels {names[:10]} but training.numClasses "
                f"is {classes}",
            )
        return names + [str(i) for i in range(len(names), classes)]

    def encode(self, examples, field):
        index = {name: i for i, name in enumerate(self.labels or ())}
        label = np.asarray([index[r.label] for r in examples], np.int32)
        return Encoded(self.features(examples), {"label": label})

    def build(self, backbone):
        inputs, logits = self.classifier(backbone, self.cfg.training.num_classes)
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        return keras.Model(inputs, {"logits": logits}, name="bert_classification")

    def loss(self, outputs, labels):
        return label_loss(outputs["logits"], labels["label"])

    def serve(self, model, archive):
        labels = tf.constant(self.labels or [])

        def classify(*texts):
            logits = model(self.encoder.encode_texts(*texts), training=False)["logits"]
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
            label_id = tf.argmax(probabilities, -1, output_type=tf.int32)
            return {
                "probabilities": probabilities,
                "label_id": label_id,
                "label": tf.gather(labels, label_id),
            }

        self.endpoint(archive, classify)

    @classmethod
    def prediction(cls, text, out):
        return {
            "text": text,
            "label": out["label"].decode(),
            "probabilities": [round(float(p), 4) for p in out["probabilities"]],
        }


TASK_CLASS = Classification
