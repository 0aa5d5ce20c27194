"""Initialise from a Google BERT TF1 checkpoint (bert_model.ckpt*, names like
`bert/encoder/layer_0/attention/self/query/kernel`) by explicit name mapping.

Google's names and layouts are also the common ground of the other formats: the Hugging Face
importer and exporter (`huggingface.py`) translate names to and from these.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.tasks import all_heads

if TYPE_CHECKING:
    from berth_trainer.tasks.base import BertTask

log = logging.getLogger("berth_trainer")

POOLER = ("bert/pooler/dense/kernel", "bert/pooler/dense/bias")
#: Checkpoint entries that are never loaded: optimizer slots, step counter, loss scale.
_IGNORED = ("global_step", "/adam_m", "/adam_v", "bad_steps", "loss_scale")


def _backbone_map(backbone: keras.Model) -> dict[str, tuple[str, str]]:
    """TF1 name → (backbone weight path, reshape kind)."""
    m = {
        "bert/embeddings/word_embeddings": ("token_embedding/embeddings", ""),
        "bert/embeddings/position_embeddings": ("position_embedding/embeddings", ""),
        "bert/embeddings/token_type_embeddings": ("segment_embedding/embeddings", ""),
        "bert/embeddings/LayerNorm/gamma": ("embeddings_layer_norm/gamma", ""),
        "bert/embeddings/LayerNorm/beta": ("embeddings_layer_norm/beta", ""),
        POOLER[0]: ("pooled_dense/kernel", ""),
        POOLER[1]: ("pooled_dense/bias", ""),
    }
    for i in range(backbone.num_layers):
        g, k = f"bert/encoder/layer_{i}/", f"transformer_layer_{i}/"
        for part in ("query", "key", "value"):
            m[f"{g}attention/self/{part}/kernel"] = (
                f"{k}self_attention_layer/{part}/kernel",
                "qkv",
            )
            m[f"{g}attention/self/{part}/bias"] = (f"{k}self_attention_layer/{part}/bias", "qkv")
        m[f"{g}attention/output/dense/kernel"] = (
            f"{k}self_attention_layer/attention_output/kernel",
            "out",
        )
        m[f"{g}attention/output/dense/bias"] = (
            f"{k}self_attention_layer/attention_output/bias",
            "",
        )
        for tf1, ours in (
            ("attention/output/LayerNorm", "self_attention_layer_norm"),
            ("intermediate/dense", "feedforward_intermediate_dense"),
            ("output/dense", "feedforward_output_dense"),
            ("output/LayerNorm", "feedforward_layer_norm"),
        ):
            a, b = ("gamma", "beta") if "LayerNorm" in tf1 else ("kernel", "bias")
            m[f"{g}{tf1}/{a}"] = (f"{k}{ours}/{a}", "")
            m[f"{g}{tf1}/{b}"] = (f"{k}{ours}/{b}", "")
    return m


def _heads() -> dict[str, tuple[str, str, str]]:
    """Every task head's TF1 name → (our layer, weight, reshape kind); a kind "T" kernel is
    [classes, H] in Google's layout (run_classifier.py's `output_weights`, NSP)."""
    return {name: w for head in all_heads() for name, w in head.weights.items()}


def weight_map(model: keras.Model) -> dict[str, tuple[keras.Variable, str]]:
    """TF1 name → (the model's variable, reshape kind), for every weight the model has."""
    backbone = model.get_layer("bert")
    ours = {w.path: w for w in backbone.weights}
    out = {n: (ours[p], kind) for n, (p, kind) in _backbone_map(backbone).items()}
    layers = {head.layer for head in all_heads()}
    heads = {  # "mlm_head/output_bias" → weight, for every head the model has
        w.path: w
        for layer in model._flatten_layers(include_self=False)
        if layer.name in layers
        for w in layer.weights
    }
    for name, (layer, weight, kind) in _heads().items():
        if f"{layer}/{weight}" in heads:
            out[name] = (heads[f"{layer}/{weight}"], kind)
    return out


class NamedWeights(Protocol):
    """A checkpoint as TF1 names (Google's layout): shapes, and values on demand."""

    def shapes(self) -> dict[str, tuple]: ...

    def get(self, name: str) -> np.ndarray: ...


class _Tf1Reader:
    def __init__(self, prefix: str) -> None:
        self.reader = tf.train.load_checkpoint(prefix)

    def shapes(self) -> dict[str, tuple]:
        return {n: tuple(s) for n, s in self.reader.get_variable_to_shape_map().items()}

    def get(self, name: str) -> np.ndarray:
        return self.reader.get_tensor(name)


def load_google_checkpoint(prefix: str, model: keras.Model, task: BertTask) -> None:
    """Initialise `model` from a Google BERT TF1 checkpoint (see `load_named_weights`)."""
    load_named_weights(_Tf1Reader(prefix), model, task, prefix)


def load_named_weights(
    source: NamedWeights, model: keras.Model, task: BertTask, where: str
) -> None:
    """Assign every weight the checkpoint has for `model`; raise CHECKPOINT_MISMATCH listing
    all problems at once.

    Required: the backbone; the pooler when a head of `task` reads it; a `required` head (the
    MLM head of pretraining and seq2seq). Optional, left freshly initialised with a warning:
    any other head the checkpoint lacks (a classifier of another label count too). Heads the
    model does not have (e.g. NSP when fine-tuning) are skipped.
    """
    saved = source.shapes()
    relevant = {n for n in saved if not any(x in n for x in _IGNORED)}
    targets = weight_map(model)
    optional = {n for head in all_heads() if not head.required for n in head.weights}
    optional |= set() if task.pooled else set(POOLER)
    missing = sorted(n for n in targets if n not in saved and n not in optional)
    unexpected = sorted(relevant - set(_heads()) - set(targets))
    shapes = []
    for name, (var, kind) in targets.items():
        if name in saved and _reshaped(saved[name], kind, var) != tuple(var.shape):
            if name in optional and name not in POOLER:
                saved.pop(name)  # e.g. another label count: a fresh classifier
                continue
            shapes.append(f"{name}: checkpoint {saved[name]} vs model {tuple(var.shape)}")
    fresh = sorted(n for n in optional if n not in saved)
    if fresh:
        log.warning("checkpoint %s lacks %s: left freshly initialised", where, fresh)
    if missing or unexpected or shapes:
        need = " (the pooler is needed for classification)" if set(POOLER) & set(missing) else ""
        need += (
            " (cls/predictions/* is needed for pretraining and seq2seq)"
            if any(n.startswith("cls/") for n in missing)
            else ""
        )
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"initCheckpoint: {where} does not match the model{need}: missing {missing}; "
            f"unexpected {unexpected}; wrong shapes {shapes}. Likely cause: model size, "
            "maxSequenceLength or vocabulary in the config differ from the checkpoint's "
            "config (bert_config.json / config.json) and vocab.txt.",
        )
    for name, (var, kind) in targets.items():
        if name in saved:
            value = source.get(name)
            value = value.T if kind == "T" else value
            var.assign(np.reshape(value, var.shape).astype(var.dtype))


def tf1_value(var: keras.Variable, kind: str) -> np.ndarray:
    """A variable's value in Google's TF1 layout (the inverse of loading it)."""
    value = keras.ops.convert_to_numpy(var).astype(np.float32)
    if kind == "T":
        return value.T
    if kind == "qkv":
        return value.reshape(value.shape[0], -1) if value.ndim == 3 else value.reshape(-1)
    if kind == "out":
        return value.reshape(-1, value.shape[-1])
    return value


def _reshaped(shape: tuple, kind: str, var) -> tuple:
    """The checkpoint shape in our layout (attention kernels are split per head)."""
    if kind == "T":
        return tuple(reversed(shape))
    if kind == "qkv" and len(shape) == 2:
        return (shape[0], *tuple(var.shape)[1:]) if shape[1] == np.prod(var.shape[1:]) else shape
    if kind == "qkv" and len(shape) == 1:
        return tuple(var.shape) if shape[0] == np.prod(var.shape) else shape
    if kind == "out":
        return (*tuple(var.shape)[:2], shape[1]) if shape[0] == np.prod(var.shape[:2]) else shape
    return shape
