"""Initialise from a Google BERT TF1 checkpoint (bert_model.ckpt*, names like
`bert/encoder/layer_0/attention/self/query/kernel`) by explicit name mapping."""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import Task
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

log = logging.getLogger("berth_trainer")

POOLER = ("bert/pooler/dense/kernel", "bert/pooler/dense/bias")
#: Checkpoint entries that are never loaded: NSP head, optimizer slots, step counter.
_IGNORED = ("cls/seq_relationship/", "global_step", "/adam_m", "/adam_v", "bad_steps", "loss_scale")


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


_HEAD_MAP = {
    "cls/predictions/transform/dense/kernel": "intermediate_dense/kernel",
    "cls/predictions/transform/dense/bias": "intermediate_dense/bias",
    "cls/predictions/transform/LayerNorm/gamma": "intermediate_layer_norm/gamma",
    "cls/predictions/transform/LayerNorm/beta": "intermediate_layer_norm/beta",
    "cls/predictions/output_bias": "output_bias",
}


def load_google_checkpoint(
    prefix: str, backbone: keras.Model, head: keras.layers.Layer, task: str
) -> None:
    """Assign every mapped variable; raise CHECKPOINT_MISMATCH listing all problems at once."""
    reader = tf.train.load_checkpoint(prefix)
    saved = {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()}
    relevant = {n for n in saved if not any(x in n for x in _IGNORED)}
    ours = {w.path: w for w in backbone.weights}
    mapping = _backbone_map(backbone)
    targets = {n: ours[p] for n, (p, _) in mapping.items()}
    kinds = {n: kind for n, (_, kind) in mapping.items()}
    heads = {w.path.split("/", 1)[1]: w for w in head.weights}
    pretraining = task == Task.PRETRAINING
    if pretraining:
        targets |= {n: heads[p] for n, p in _HEAD_MAP.items()}
    optional = set(POOLER) if pretraining else set(_HEAD_MAP)
    missing = sorted(n for n in targets if n not in saved and n not in optional)
    unused_missing = sorted(n for n in optional if n not in saved)
    unexpected = sorted(relevant - set(targets) - set(_HEAD_MAP) - set(POOLER))
    if unused_missing:
        log.warning(
            "checkpoint %s lacks %s (not needed by %s: left freshly initialised)",
            prefix,
            unused_missing,
            task,
        )
    shapes = []
    for name, var in targets.items():
        if name in saved and _reshaped(saved[name], kinds.get(name, ""), var) != tuple(var.shape):
            shapes.append(f"{name}: checkpoint {saved[name]} vs model {tuple(var.shape)}")
    if missing or unexpected or shapes:
        need = " (the pooler is needed for classification)" if set(POOLER) & set(missing) else ""
        need += (
            " (cls/predictions/* is needed for pretraining)"
            if any(n.startswith("cls/") for n in missing)
            else ""
        )
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"initCheckpoint: {prefix} does not match the model{need}: missing {missing}; "
            f"unexpected {unexpected}; wrong shapes {shapes}. Likely cause: model size, "
            "maxSequenceLength or vocabulary in the config differ from the checkpoint's "
            "bert_config.json / vocab.txt.",
        )
    for name, var in targets.items():
        if name in saved:
            value = reader.get_tensor(name)
            var.assign(np.reshape(value, var.shape).astype(var.dtype))


def _reshaped(shape: tuple, kind: str, var) -> tuple:
    """The checkpoint shape in our layout (attention kernels are split per head)."""
    if kind == "qkv" and len(shape) == 2:
        return (shape[0], *tuple(var.shape)[1:]) if shape[1] == np.prod(var.shape[1:]) else shape
    if kind == "qkv" and len(shape) == 1:
        return tuple(var.shape) if shape[0] == np.prod(var.shape) else shape
    if kind == "out":
        return (*tuple(var.shape)[:2], shape[1]) if shape[0] == np.prod(var.shape[:2]) else shape
    return shape
