"""A Hugging Face BERT reference for the trainer's importer and exporter tests.

It writes `BertForPreTraining` checkpoints (config.json, model.safetensors, vocab.txt) with the
exact Hugging Face names and PyTorch layouts, and computes their outputs in float64 numpy. The
reference comes from the same weights but is independent of TensorFlow, so it checks what the
trainer's Hugging Face importer loads and what its exporter writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

_erf = np.frompyfunc(math.erf, 1, 1)


def hf_config(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position: int,
) -> dict:
    """A complete Hugging Face `BertConfig` dict, without dropout."""
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position,
        "type_vocab_size": 2,
        "hidden_act": "gelu_new",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def random_hf_state(
    config: dict, seed: int, with_nsp: bool = True, with_pooler: bool = True
) -> dict[str, np.ndarray]:
    """Random float32 `BertForPreTraining` weights; nn.Linear weights are [out, in]."""
    rng = np.random.default_rng(seed)
    v, h, i = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    state: dict[str, np.ndarray] = {}

    def put(name: str, *shape: int) -> None:
        state[name] = (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def linear(name: str, out: int, inp: int) -> None:
        put(f"{name}.weight", out, inp)
        put(f"{name}.bias", out)

    def layer_norm(name: str) -> None:
        state[f"{name}.weight"] = (1.0 + rng.standard_normal(h) * 0.1).astype(np.float32)
        put(f"{name}.bias", h)

    put("bert.embeddings.word_embeddings.weight", v, h)
    put("bert.embeddings.position_embeddings.weight", config["max_position_embeddings"], h)
    put("bert.embeddings.token_type_embeddings.weight", config["type_vocab_size"], h)
    layer_norm("bert.embeddings.LayerNorm")
    for n in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}"
        for proj in ("query", "key", "value"):
            linear(f"{p}.attention.self.{proj}", h, h)
        linear(f"{p}.attention.output.dense", h, h)
        layer_norm(f"{p}.attention.output.LayerNorm")
        linear(f"{p}.intermediate.dense", i, h)
        linear(f"{p}.output.dense", h, i)
        layer_norm(f"{p}.output.LayerNorm")
    if with_pooler:
        linear("bert.pooler.dense", h, h)
    linear("cls.predictions.transform.dense", h, h)
    layer_norm("cls.predictions.transform.LayerNorm")
    put("cls.predictions.bias", v)
    if with_nsp:
        linear("cls.seq_relationship", 2, h)
    return state


def write_hf_checkpoint(
    directory: str | Path, config: dict, state: dict[str, np.ndarray], vocabulary: list[str]
) -> str:
    """Writes config.json, model.safetensors and vocab.txt into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(dict(state), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token in vocabulary))
    return str(out)


def _gelu(x: np.ndarray, act: str) -> np.ndarray:
    """transformers' "gelu" (exact, erf) or "gelu_new" (the tanh approximation)."""
    if act == "gelu_new":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def reference_forward(
    state: dict[str, np.ndarray],
    config: dict,
    token_ids: np.ndarray,
    segment_ids: np.ndarray,
    padding_mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """Hugging Face `BertForPreTraining` inference (no dropout) in float64 numpy."""
    w = {k: np.asarray(a, dtype=np.float64) for k, a in state.items()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    act = config["hidden_act"]

    def dense(name: str, x: np.ndarray) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def layer_norm(name: str, x: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    token_ids, segment_ids = np.asarray(token_ids), np.asarray(segment_ids)
    batch, seq = token_ids.shape
    x = (
        w["bert.embeddings.word_embeddings.weight"][token_ids]
        + w["bert.embeddings.position_embeddings.weight"][np.arange(seq)][None]
        + w["bert.embeddings.token_type_embeddings.weight"][segment_ids]
    )
    x = layer_norm("bert.embeddings.LayerNorm", x)
    head_dim = x.shape[-1] // heads
    key_bias = np.where(np.asarray(padding_mask)[:, None, None, :] == 0, -1e9, 0.0)

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

    for n in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}"
        q, k, v = (split(dense(f"{p}.attention.self.{t}", x)) for t in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + key_bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        attn = dense(f"{p}.attention.output.dense", context)
        x = layer_norm(f"{p}.attention.output.LayerNorm", attn + x)
        ffn = dense(f"{p}.output.dense", _gelu(dense(f"{p}.intermediate.dense", x), act))
        x = layer_norm(f"{p}.output.LayerNorm", ffn + x)

    out = {"sequence_output": x}
    if "bert.pooler.dense.weight" in w:
        out["pooled_output"] = np.tanh(dense("bert.pooler.dense", x[:, 0]))
    t = _gelu(dense("cls.predictions.transform.dense", x), act)
    t = layer_norm("cls.predictions.transform.LayerNorm", t)
    out["mlm_logits"] = (
        t @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
    )
    if "cls.seq_relationship.weight" in w and "pooled_output" in out:
        out["nsp_logits"] = dense("cls.seq_relationship", out["pooled_output"])
    return out
