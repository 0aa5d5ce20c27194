"""Multiple choice, SWAG-style: which of `multipleChoice.numChoices` endings continues a context.

Data: jsonl rows `{contextField: str, endingsField: [numChoices strings], data.labelField: the
index of the right ending}`. Each (context, ending) is packed as a text pair, so an example's
features are `[numChoices, sequenceLength]`. Model: the backbone over the batch's
`batch * numChoices` pairs, the pooled output, dropout and a one-unit Dense named `classifier`
(Google's `output_weights`, Hugging Face's `BertForMultipleChoice`), reshaped to logits
`[batch, numChoices]`. Loss: cross-entropy over the choices. Validation: accuracy. Export:
`context`, `endings` → `probabilities`, `choice`.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import DataFormat, Task
from berth_trainer.tasks.base import Encoded, ExampleTask, bad_row, label_loss
from berth_trainer.tasks.classification import CLASSIFIER
from berth_trainer.textfiles import rows

FEATURES = ("token_ids", "segment_ids", "padding_mask")


@dataclasses.dataclass
class Example:
    """A context, its candidate endings, the index of the right one and where it is."""

    context: str
    endings: list[str]
    label: int
    where: str


class MultipleChoice(ExampleTask):
    name = Task.MULTIPLE_CHOICE
    formats = (DataFormat.JSONL,)
    heads = (CLASSIFIER,)
    pooled = True
    architecture = "BertForMultipleChoice"

    @property
    def choices(self) -> int:
        return self.cfg.multiple_choice.num_choices

    def examples(self, files, field):
        mc, label = self.cfg.multiple_choice, self.cfg.data.label_field
        wanted = [mc.context_field, mc.endings_field, label]
        for where, row in rows(files, DataFormat.JSONL, wanted, field):
            context, endings, index = (row[k] for k in wanted)
            if not isinstance(context, str):
                raise bad_row(field, where, f"{mc.context_field} is not a string")
            if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
                raise bad_row(field, where, f"{mc.endings_field} is not a list of strings")
            if len(endings) != self.choices:
                raise bad_row(
                    field,
                    where,
                    f"{mc.endings_field} has {len(endings)} endings, multipleChoice.numChoices "
                    f"is {self.choices}",
                )
            if isinstance(index, bool) or not isinstance(index, int):
                raise bad_row(field, where, f"{label} {index!r} is not an integer index")
            if not 0 <= index < self.choices:
                raise bad_row(
                    field, where, f"{label} {index} is not an index 0..{self.choices - 1}"
                )
            yield Example(context, endings, index, where)

    def encode(self, examples, field):
        contexts = [e.context for e in examples for _ in range(self.choices)]
        packed = self.encoder.encode_strings(contexts, [x for e in examples for x in e.endings])
        shape = (len(examples), self.choices, -1)
        features = {k: v.reshape(shape) for k, v in packed.items()}
        label = np.asarray([e.label for e in examples], np.int32)
        return Encoded(features, {"label": label})

    def build(self, backbone):
        k, n = self.choices, self.cfg.training.sequence_length
        inputs = {f: keras.Input((k, n), dtype="int32", name=f) for f in FEATURES}
        pairs = {f: keras.ops.reshape(x, (-1, n)) for f, x in inputs.items()}  # [batch * k, n]
        pooled = keras.layers.Dropout(
            backbone.dropout, dtype=backbone.dtype_policy, name="pooled_dropout"
        )(backbone(pairs)["pooled_output"])
        scores = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name=self.head.layer,
        )(pooled)
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(
            keras.ops.reshape(scores, (-1, k))
        )
        return keras.Model(inputs, {"logits": logits}, name="bert_multiple_choice")

    def loss(self, outputs, labels):
        return label_loss(outputs["logits"], labels["label"])

    def serve(self, model, archive):
        k = self.choices

        def choose(context, endings):
            packed = self.encoder.encode_texts(tf.repeat(context, k), tf.reshape(endings, [-1]))
            shape = [-1, k, self.encoder.sequence_length]
            features = {f: tf.reshape(v, shape) for f, v in packed.items()}
            logits = model(features, training=False)["logits"]
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
            return {
                "probabilities": probabilities,
                "choice": tf.argmax(probabilities, -1, output_type=tf.int32),
            }

        archive.add_endpoint(
            "serving_default",
            choose,
            [
                tf.TensorSpec([None], tf.string, name="context"),
                tf.TensorSpec([None, k], tf.string, name="endings"),
            ],
        )


TASK_CLASS = MultipleChoice
