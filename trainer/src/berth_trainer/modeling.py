"""The task models: keras-hub `BertBackbone` plus a task head, as one functional Keras model.

Inputs are named and fed as a dict (`token_ids`, `segment_ids`, `padding_mask`, and for
pretraining `mask_positions`), all of fixed length, so the whole step compiles with XLA.
Classification is a functional model of keras-hub and built-in Keras layers; pretraining is
`BertPretrainer` (MLM head tied to the token embedding), whose config holds the backbone so
that `from_config` and `keras.models.clone_model` rebuild the tie. Rebuild either with
`type(model).from_config(model.get_config())`.

The backbone built for training (`build_backbone`) runs its feed-forward GELU as one fused
kernel each way and recomputes LayerNorm in the backward pass instead of keeping its
intermediates: no extra matmuls, the same gradients to float rounding, less time and memory
(docs/benchmarks.md). `for_serving` traces the same model with Keras' own ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import keras_hub
from keras.src.backend.common.remat import RematMode

from berth_trainer.activations import fused_gelu, keras_gelu, use_fused_gelu
from berth_trainer.bert_pretrainer import BertPretrainer
from berth_trainer.config import SentencePrediction, Task, TrainerConfig
from berth_trainer.tasks import FineTuning

#: Name of the classification head's output layer (also used by the checkpoint importer).
CLASSIFIER_NAME = "classifier"


@contextlib.contextmanager
def for_serving(model: keras.Model) -> Iterator[keras.Model]:
    """Trace `model` with Keras' own ops only, e.g. for a SavedModel: no recomputation (the
    custom gradients of `tf.recompute_grad`) and keras-hub's GELU instead of the fused one (a
    custom gradient and XLA-compiled functions), so that loading it needs neither."""
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    saved = [(layer._remat_mode, getattr(layer, "activation", None)) for layer in layers]
    for layer in layers:
        layer._remat_mode = None
        if getattr(layer, "activation", None) is fused_gelu:
            layer.activation = keras_gelu
    try:
        yield model
    finally:
        for layer, (mode, activation) in zip(layers, saved, strict=True):
            layer._remat_mode = mode
            if activation is fused_gelu:
                layer.activation = activation


def text_inputs(sequence_length: int) -> dict[str, keras.KerasTensor]:
    """The named int32 inputs `token_ids`, `segment_ids`, `padding_mask` of a functional task
    model, `[batch, sequence_length]`."""
    return {
        k: keras.Input((sequence_length,), dtype="int32", name=k)
        for k in ("token_ids", "segment_ids", "padding_mask")
    }


def build_backbone(cfg: TrainerConfig, vocabulary_size: int) -> keras_hub.models.BertBackbone:
    m = cfg.model.resolved()
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        hidden_dim=m.hidden_size,
        intermediate_dim=m.intermediate_size,
        dropout=m.dropout,
        max_sequence_length=m.max_sequence_length,
        name="bert",
    )
    # The feed-forward GELU is one fused kernel each way that keeps only its input
    # (`activations.fused_gelu`). A LayerNormalization computes in float32 and keeps a
    # float32 copy of its input and of `gamma / std`; recomputed in the backward pass, it
    # keeps only its input: Keras' own "list_of_layers" remat mode, set through the attribute
    # a `RematScope` sets at construction (`Layer._remat_mode`, read by `Layer.__call__`); a
    # test fails if Keras stops honouring it. Nothing is recomputed that calls an RNG
    # (dropout) or a matmul.
    use_fused_gelu(backbone)
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.LayerNormalization):
            layer._remat_mode = RematMode("list_of_layers", None, [layer.name])
    return backbone


def build_model(
    cfg: TrainerConfig,
    vocabulary_size: int,
    backbone: keras.Model | None = None,
    task: FineTuning | None = None,
    labels: list[str] | None = None,
) -> keras.Model:
    """The model of `cfg.task`: outputs `{"logits": ...}` (MLM: at `mask_positions`; with a
    sentence objective also `"sentence_logits"`); a fine-tuning `task` builds its own."""
    backbone = backbone or build_backbone(cfg, vocabulary_size)
    if task is not None:
        return task.build(backbone, labels)
    n = cfg.training.sequence_length
    if cfg.task == Task.PRETRAINING:
        return BertPretrainer(
            backbone,
            sequence_length=n,
            max_predictions_per_sequence=cfg.training.max_predictions_per_sequence,
            sentence_classes=0
            if cfg.pretraining.sentence_prediction == SentencePrediction.NONE
            else 2,
            name=f"bert_{cfg.task}",
        )
    inputs, logits = pooled_classifier(backbone, n, cfg.training.num_classes)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, {"logits": logits}, name=f"bert_{cfg.task}")


def pooled_classifier(
    backbone: keras.Model, sequence_length: int, units: int
) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor]:
    """`text_inputs` → the pooled `[CLS]` output → dropout → `Dense(units)` named
    `classifier` (Google's `output_weights`, Hugging Face's `classifier.*`): classification's
    and regression's head."""
    inputs = text_inputs(sequence_length)
    pooled = keras.layers.Dropout(
        backbone.dropout, dtype=backbone.dtype_policy, name="pooled_dropout"
    )(backbone(inputs)["pooled_output"])
    logits = keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        dtype=backbone.dtype_policy,
        name=CLASSIFIER_NAME,
    )(pooled)
    return inputs, logits
