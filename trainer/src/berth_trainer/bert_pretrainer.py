"""`BertPretrainer`: a `BertBackbone` plus a masked-LM head tied to its token embedding, and
optionally a sentence head (next-sentence or sentence-order prediction) on the pooled output.

The head's output projection is the backbone's token embedding (transposed), as in the
original BERT: 23.4 M fewer parameters on BERT-base than an untied head, so ~0.37 GB less
for weights, gradients and the two Adam slots. keras-hub's `MaskedLMHead` serializes its
`token_embedding` as a *new* layer, so a plain functional model would come back untied from
`from_config` or `clone_model`. This model therefore keeps the backbone in its config (as
keras-hub's `Task` models do) and re-creates the tie in `__init__`: `from_config`,
`keras.models.clone_model` and `.keras` files all rebuild a tied model.

>>> import keras_hub
>>> backbone = keras_hub.models.BertBackbone(
...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
...     max_sequence_length=16, name="bert")
>>> model = BertPretrainer(backbone, sequence_length=16, max_predictions_per_sequence=3)
>>> clone = keras.models.clone_model(model)
>>> clone.get_layer("mlm_head").token_embedding is clone.get_layer("bert").token_embedding
True
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf
from keras_hub.src.utils.keras_utils import gelu_approximate

#: Name of the sentence (NSP/SOP) head: a 2-way Dense on the pooled output, as Google's
#: `cls/seq_relationship`.
SENTENCE_HEAD = "sentence_head"


@keras.saving.register_keras_serializable(package="berth")
class TiedMaskedLMHead(keras_hub.layers.MaskedLMHead):
    """keras-hub's `MaskedLMHead`, projecting onto the tied embedding without transposing it.

    The parent's tied path calls `token_embedding(x, reverse=True)`, which materialises the
    transposed `[hidden, vocabulary]` embedding every step and keeps it for the backward pass
    (89 MiB on BERT-base in float32). This contracts against `[vocabulary, hidden]` in place
    (`matmul(..., transpose_b=True)`); weights, config, dtypes and outputs are the parent's.
    TensorFlow-specific, like the rest of the trainer.
    """

    def call(self, inputs, mask_positions):
        x = keras.ops.take_along_axis(inputs, keras.ops.expand_dims(mask_positions, -1), axis=1)
        x = self._intermediate_layer_norm(self._intermediate_dense(x))
        embeddings = self.token_embedding.embeddings
        predictions, hidden = x.shape[1], x.shape[2]
        flat = tf.cast(tf.reshape(x, [-1, hidden]), embeddings.dtype)
        logits = tf.matmul(flat, embeddings, transpose_b=True)
        logits = tf.reshape(logits, [-1, predictions, self.vocabulary_size])
        outputs = keras.ops.cast(logits, self.compute_dtype) + self._bias
        return outputs if self.activation is None else self.activation(outputs)


def tied_mlm_head(
    backbone: keras_hub.models.BertBackbone, sequence_length: int
) -> TiedMaskedLMHead:
    """Google BERT's masked-LM head (`cls/predictions`: dense, tanh GELU, LayerNorm, output
    bias) projecting onto `backbone`'s token embedding, built; named "mlm_head"."""
    head = TiedMaskedLMHead(
        token_embedding=backbone.token_embedding,
        intermediate_activation=gelu_approximate,
        activation=None,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        layer_norm_epsilon=1e-12,
        dtype=backbone.dtype_policy,
        name="mlm_head",
    )
    head.build((None, sequence_length, backbone.hidden_dim))
    return head


class BackboneModel(keras.Model):
    """A subclassed task model whose config holds its backbone, so that `from_config` and
    `keras.models.clone_model` rebuild whatever `__init__` ties to it; subclasses name their
    other constructor arguments (kept as attributes) in `config_fields`."""

    config_fields: tuple[str, ...] = ()

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            **{k: getattr(self, k) for k in self.config_fields},
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="berth")
class BertPretrainer(BackboneModel):
    """MLM pretraining model: named dict inputs, output `{"logits": [batch, predictions, V]}`
    and, with `sentence_classes` (2 for NSP or SOP), `"sentence_logits": [batch, 2]`.

    Inputs `token_ids`, `segment_ids`, `padding_mask` (`[batch, sequence_length]`) and
    `mask_positions` (`[batch, max_predictions_per_sequence]`), all int32 and of fixed shape,
    so the step compiles with XLA. Logits are float32, and only at `mask_positions`. The
    head's GELU is the tanh approximation, as the backbone's and Google BERT's.

    A subclassed model (a `BackboneModel`) rather than a functional one: `clone_model` clones
    a functional model layer by layer (which would give the head a fresh, untied embedding),
    but rebuilds any other model from its config, and the config rebuilds the tie.
    """

    config_fields = ("sequence_length", "max_predictions_per_sequence", "sentence_classes")

    def __init__(
        self,
        backbone: keras_hub.models.BertBackbone,
        sequence_length: int,
        max_predictions_per_sequence: int,
        sentence_classes: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # === Layers ===
        self.backbone = backbone
        self.mlm_head = tied_mlm_head(backbone, sequence_length)
        self.sentence_head = None
        if sentence_classes:
            self.sentence_head = keras.layers.Dense(
                sentence_classes,
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                dtype=backbone.dtype_policy,
                name=SENTENCE_HEAD,
            )
            self.sentence_head.build((None, backbone.hidden_dim))

        # === Config ===
        self.sequence_length = sequence_length
        self.max_predictions_per_sequence = max_predictions_per_sequence
        self.sentence_classes = sentence_classes
        self.built = True

    def call(self, inputs: dict, training: bool | None = None) -> dict:
        encoded = self.backbone(
            {k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")},
            training=training,
        )
        logits = self.mlm_head(encoded["sequence_output"], mask_positions=inputs["mask_positions"])
        outputs = {"logits": keras.ops.cast(logits, "float32")}
        if self.sentence_head is not None:
            sentence = self.sentence_head(encoded["pooled_output"])
            outputs["sentence_logits"] = keras.ops.cast(sentence, "float32")
        return outputs
