"""The backbone every task model shares: keras-hub `BertBackbone`; a task (`tasks/`) adds its
head, as one Keras model.

Inputs are named and fed as a dict (`token_ids`, `segment_ids`, `padding_mask`, and for
pretraining `mask_positions`), all of fixed length, so the whole step compiles with XLA.
Rebuild a task model with `type(model).from_config(model.get_config())`.

The backbone built for training (`build_backbone`) runs its feed-forward GELU as one fused
kernel each way and recomputes LayerNorm in the backward pass instead of keeping its
intermediates: no extra matmuls, the same gradients to float rounding, less time and memory
(docs/benchmarks.md). `for_serving` traces the same model with Keras' own ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import keras
import keras_hub
from keras.src.backend.common.remat import RematMode

from berth_trainer.activations import fused_gelu, keras_gelu, use_fused_gelu
from berth_trainer.config import TrainerConfig

if TYPE_CHECKING:
    from berth_trainer.tasks.base import BertTask


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


def build_model(task: BertTask, backbone: keras.Model | None = None) -> keras.Model:
    """The model of `task` (`backbone` and its heads; a new backbone unless given)."""
    vocabulary_size = len(task.encoder.vocabulary)
    return task.build(backbone or build_backbone(task.cfg, vocabulary_size))
