"""Hugging Face BERT checkpoints in and out: a directory of `config.json`, `model.safetensors`
(or a sharded `model.safetensors.index.json`) and `vocab.txt`, as `transformers` writes and
reads them (`BertModel`, and the `BertFor...` class of each task: `BertTask.architecture`).

Names translate to Google's TF1 names (`google_checkpoint`), whose mapping onto the model
already exists; a PyTorch `nn.Linear` weight is the transpose of a TF1 kernel. keras-hub's own
converter (`BertBackbone.from_preset` on such a directory) covers the backbone only, builds a
backbone of its own and writes nothing, so heads, clear mismatch errors and the export are here.
Reading needs only the `safetensors` package (no PyTorch).

>>> hf_to_tf1("bert.encoder.layer.3.attention.self.query.weight")
('bert/encoder/layer_3/attention/self/query/kernel', True)
>>> tf1_to_hf("bert/embeddings/LayerNorm/gamma")
('bert.embeddings.LayerNorm.weight', False)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.google_checkpoint import load_named_weights, tf1_value, weight_map
from berth_trainer.tasks import all_heads
from berth_trainer.vocab import is_uncased

if TYPE_CHECKING:
    from berth_trainer.tasks.base import BertTask

log = logging.getLogger("berth_trainer")

#: HF names with no TF1 counterpart: buffers, and the decoder tied to the word embeddings.
_SKIPPED = ("bert.embeddings.position_ids", "cls.predictions.decoder.weight")


@functools.cache
def _special() -> dict[str, str]:
    """HF → TF1 names that no rule derives (none of them transposed): the task heads'."""
    return {hf: tf1 for head in all_heads() for hf, tf1 in head.huggingface.items()}


#: Our GELU is the tanh approximation (Google BERT's); transformers calls it "gelu_new".
HIDDEN_ACT = "gelu_new"
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def hf_to_tf1(name: str) -> tuple[str, bool]:
    """TF1 name of a Hugging Face tensor, and whether the tensor is transposed."""
    if name in _special():
        return _special()[name], False
    if not name.startswith(("bert.", "cls.")):
        name = "bert." + name  # a bare BertModel's state dict
    tf1 = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", name).replace(".", "/")
    tf1 = tf1.replace("LayerNorm/weight", "LayerNorm/gamma").replace(
        "LayerNorm/bias", "LayerNorm/beta"
    )
    if tf1.endswith("_embeddings/weight"):
        return tf1.removesuffix("/weight"), False
    if tf1.endswith("/weight"):
        return tf1.removesuffix("/weight") + "/kernel", True
    return tf1, False


def tf1_to_hf(name: str) -> tuple[str, bool]:
    """The inverse of `hf_to_tf1` (the names a `BertForPreTraining` state dict uses)."""
    for hf, tf1 in _special().items():
        if tf1 == name and hf != "cls.predictions.decoder.bias":
            return hf, False
    transposed = name.endswith("/kernel")
    hf = name.removesuffix("/kernel") + "/weight" if transposed else name
    hf = hf.replace("LayerNorm/gamma", "LayerNorm/weight").replace(
        "LayerNorm/beta", "LayerNorm/bias"
    )
    if hf.endswith("_embeddings"):
        hf += "/weight"
    return re.sub(r"/layer_(\d+)/", r"/layer/\1/", hf).replace("/", "."), transposed


class _SafetensorsWeights:
    """A Hugging Face directory's tensors (local or gs://), under TF1 names and layout."""

    def __init__(self, directory: str) -> None:
        from safetensors.numpy import load

        index = os.path.join(directory, "model.safetensors.index.json")
        if tf.io.gfile.exists(index):
            with tf.io.gfile.GFile(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif tf.io.gfile.exists(os.path.join(directory, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            older = tf.io.gfile.exists(os.path.join(directory, "pytorch_model.bin"))
            raise TrainerError(
                ExitCode.CHECKPOINT_MISMATCH,
                f"initCheckpoint: {directory} has config.json but no model.safetensors"
                + (
                    " (only pytorch_model.bin, which needs PyTorch to read: convert it with "
                    "`transformers` once, `model.save_pretrained(dir, safe_serialization=True)`)"
                    if older
                    else ""
                ),
            )
        self._tensors: dict[str, np.ndarray] = {}
        for file in files:
            with tf.io.gfile.GFile(os.path.join(directory, file), "rb") as f:
                for key, value in load(f.read()).items():
                    if key not in _SKIPPED:
                        tf1, transposed = hf_to_tf1(key)
                        self._tensors.setdefault(tf1, value.T if transposed else value)

    def shapes(self) -> dict[str, tuple]:
        return {name: tuple(value.shape) for name, value in self._tensors.items()}

    def get(self, name: str) -> np.ndarray:
        return self._tensors[name]


def _dimensions(model: keras.Model) -> dict[str, int]:
    """The backbone's dimensions under `BertConfig`'s names."""
    backbone = model.get_layer("bert")
    return {
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
    }


def _config_mismatches(config: dict, model: keras.Model) -> list[str]:
    return [
        f"config.json {k} {config[k]} vs model {v}"
        for k, v in _dimensions(model).items()
        if k in config and config[k] != v
    ]


def load_huggingface(directory: str, model: keras.Model, task: BertTask) -> None:
    """Initialise `model` from a Hugging Face BERT directory; one clear error lists every
    mismatch (the config's dimensions first, then missing / unexpected / mis-shaped tensors)."""
    with tf.io.gfile.GFile(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    where = f"initCheckpoint: {directory}"
    if config.get("model_type", "bert") != "bert":
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"{where} is a {config['model_type']!r} checkpoint, not BERT (model_type 'bert')",
        )
    act = config.get("hidden_act", "gelu")
    if act not in (*_TANH_GELU, "gelu"):
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"{where}: hidden_act {act!r} is not a GELU; Berth's BERT computes GELU",
        )
    if act == "gelu":
        log.warning(
            "%s: hidden_act 'gelu' is the exact GELU; Berth computes its tanh approximation "
            "(as Google BERT did): outputs differ by about 1e-3",
            directory,
        )
    mismatches = _config_mismatches(config, model)
    if mismatches:
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"{where} does not match the model: {'; '.join(mismatches)}. Likely cause: "
            "model size, maxSequenceLength or vocabulary in the config differ from the "
            "checkpoint's config.json and vocab.txt.",
        )
    load_named_weights(_SafetensorsWeights(directory), model, task, directory)


def export_huggingface(
    model: keras.Model, task: BertTask, vocabulary: list[str], directory: str
) -> None:
    """Write `directory` so that `transformers` loads it unchanged: config.json, model.safetensors
    (PyTorch names and layouts), vocab.txt and tokenizer_config.json."""
    from safetensors.numpy import save

    backbone = model.get_layer("bert")
    tensors = {}
    for tf1, (var, kind) in weight_map(model).items():
        hf, transposed = tf1_to_hf(tf1)
        value = tf1_value(var, kind)
        tensors[hf] = np.ascontiguousarray(value.T if transposed else value)
    config = {
        "architectures": [task.architecture],
        "model_type": "bert",
        **_dimensions(model),
        "hidden_act": HIDDEN_ACT,
        "hidden_dropout_prob": backbone.dropout,
        "attention_probs_dropout_prob": backbone.dropout,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": vocabulary.index("[PAD]"),
        "position_embedding_type": "absolute",
    }
    config |= task.huggingface_config()
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))  # "pt": PyTorch names and layouts
    tokenizer = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": is_uncased(vocabulary),
        "model_max_length": backbone.max_sequence_length,
    }
    for name, data in (("config.json", config), ("tokenizer_config.json", tokenizer)):
        with tf.io.gfile.GFile(os.path.join(directory, name), "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True))
    with tf.io.gfile.GFile(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("".join(tok + "\n" for tok in vocabulary))
