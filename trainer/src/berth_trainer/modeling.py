"""The task models: keras-hub `BertBackbone` plus a task head, as one functional Keras model.

Inputs are named and fed as a dict (`token_ids`, `segment_ids`, `padding_mask`, and for
pretraining `mask_positions`), all of fixed length, so the whole step compiles with XLA. The
models use only keras-hub and built-in Keras layers, so `keras.models.clone_model` and
`get_config`/`from_config` rebuild them exactly.
"""

from __future__ import annotations

import keras
import keras_hub

from berth_trainer.config import Task, TrainerConfig

#: Name of the classification head's output layer (also used by the checkpoint importer).
CLASSIFIER_NAME = "classifier"
MLM_HEAD_NAME = "mlm_head"


def build_backbone(cfg: TrainerConfig, vocabulary_size: int) -> keras_hub.models.BertBackbone:
    m = cfg.model.resolved()
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        hidden_dim=m.hidden_size,
        intermediate_dim=m.intermediate_size,
        dropout=m.dropout,
        max_sequence_length=m.max_sequence_length,
        name="bert",
    )


def build_model(
    cfg: TrainerConfig, vocabulary_size: int, backbone: keras.Model | None = None
) -> keras.Model:
    """The model of `cfg.task`: outputs `{"logits": ...}` (MLM: at `mask_positions`)."""
    backbone = backbone or build_backbone(cfg, vocabulary_size)
    n = cfg.training.sequence_length
    inputs = {
        "token_ids": keras.Input((n,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((n,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((n,), dtype="int32", name="padding_mask"),
    }
    encoded = backbone({k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    if cfg.task == Task.PRETRAINING:
        p = cfg.training.max_predictions_per_sequence
        inputs["mask_positions"] = keras.Input((p,), dtype="int32", name="mask_positions")
        # Untied output projection: keras-hub's tied head does not record the tie in its
        # config, so clone_model/from_config would silently untie it anyway (docs/trainer.md).
        head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=vocabulary_size,
            intermediate_activation="gelu",
            activation=None,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            layer_norm_epsilon=1e-12,
            dtype=backbone.dtype_policy,
            name=MLM_HEAD_NAME,
        )
        logits = head(encoded["sequence_output"], mask_positions=inputs["mask_positions"])
    else:
        dropped = keras.layers.Dropout(
            cfg.model.resolved().dropout, dtype=backbone.dtype_policy, name="pooled_dropout"
        )(encoded["pooled_output"])
        logits = keras.layers.Dense(
            cfg.training.num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name=CLASSIFIER_NAME,
        )(dropped)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, {"logits": logits}, name=f"bert_{cfg.task}")
