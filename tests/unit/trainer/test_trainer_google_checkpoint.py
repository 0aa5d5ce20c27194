"""Import a Google-format BERT TF1 checkpoint written here with TF1 names; compare against an
independent NumPy BERT forward pass over the same weights; mismatches fail clearly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
from hf_reference import hf_config, reference_forward
from trainer_testlib import (
    classification_config,
    pretraining_config,
    run_cli,
    task_of,
    train_args,
    write_config,
)

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.google_checkpoint import load_google_checkpoint, tf1_value, weight_map
from berth_trainer.huggingface import tf1_to_hf
from berth_trainer.modeling import build_model

H, HEADS, LAYERS, FF, POS, V = 64, 2, 2, 128, 32, 60


def google_weights(rng: np.random.Generator, vocab: int = V) -> dict[str, np.ndarray]:
    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.05, shape).astype(np.float32)

    out = {
        "bert/embeddings/word_embeddings": w(vocab, H),
        "bert/embeddings/position_embeddings": w(POS, H),
        "bert/embeddings/token_type_embeddings": w(2, H),
        "bert/embeddings/LayerNorm/gamma": 1 + w(H),
        "bert/embeddings/LayerNorm/beta": w(H),
        "bert/pooler/dense/kernel": w(H, H),
        "bert/pooler/dense/bias": w(H),
        "cls/predictions/transform/dense/kernel": w(H, H),
        "cls/predictions/transform/dense/bias": w(H),
        "cls/predictions/transform/LayerNorm/gamma": 1 + w(H),
        "cls/predictions/transform/LayerNorm/beta": w(H),
        "cls/predictions/output_bias": w(vocab),
        "cls/seq_relationship/output_weights": w(2, H),
        "cls/seq_relationship/output_bias": w(2),
        "global_step": np.array(1000, np.int64),
    }
    for i in range(LAYERS):
        g = f"bert/encoder/layer_{i}/"
        for name, shape in (
            ("attention/self/query/", (H, H)),
            ("attention/self/key/", (H, H)),
            ("attention/self/value/", (H, H)),
            ("attention/output/dense/", (H, H)),
            ("intermediate/dense/", (H, FF)),
            ("output/dense/", (FF, H)),
        ):
            out[g + name + "kernel"], out[g + name + "bias"] = w(*shape), w(shape[1])
        for ln in ("attention/output/LayerNorm/", "output/LayerNorm/"):
            out[g + ln + "gamma"], out[g + ln + "beta"] = 1 + w(H), w(H)
    return out


def write_tf1_checkpoint(prefix: str, weights: dict[str, np.ndarray]) -> None:
    names = sorted(weights)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(weights[n]) for n in names],
    )


def reference(wt: dict[str, np.ndarray], ids, segments, mask) -> dict[str, np.ndarray]:
    """The independent NumPy BERT of `hf_reference` over the same weights, renamed to Hugging
    Face's names (`tf1_to_hf` is pinned by the Hugging Face tests against that reference)."""
    state = {}
    for name, value in wt.items():
        if name != "global_step":
            hf, transposed = tf1_to_hf(name)
            state[hf] = value.T if transposed else value
    return reference_forward(state, hf_config(V, H, LAYERS, HEADS, FF, POS), ids, segments, mask)


def tf1_weights(model) -> dict[str, np.ndarray]:
    """The model's weights under Google's names and layouts (what an export writes)."""
    return {name: tf1_value(var, kind) for name, (var, kind) in weight_map(model).items()}


def _task(corpus, tmp_path, task: str):
    make = pretraining_config if task == "pretraining" else classification_config
    return task_of(make(corpus, tmp_path))


def test_trainer_google_checkpoint_outputs_match_reference(tmp_path, corpus):
    wt = google_weights(np.random.default_rng(0))
    write_tf1_checkpoint(str(tmp_path / "bert_model.ckpt"), wt)
    task = _task(corpus, tmp_path, "pretraining")
    model = build_model(task)
    load_google_checkpoint(str(tmp_path / "bert_model.ckpt"), model, task)
    rng = np.random.default_rng(1)
    ids = rng.integers(5, V, (2, 16)).astype(np.int32)
    segments = (np.arange(16)[None] >= 8).astype(np.int32).repeat(2, 0)
    mask = np.ones((2, 16), np.int32)
    mask[1, 12:] = 0
    out = model.get_layer("bert")({"token_ids": ids, "segment_ids": segments, "padding_mask": mask})
    ref = reference(wt, ids, segments, mask)
    np.testing.assert_allclose(out["sequence_output"], ref["sequence_output"], atol=1e-4)
    np.testing.assert_allclose(out["pooled_output"], ref["pooled_output"], atol=1e-4)
    # The MLM head: transform → LayerNorm → tied word embeddings (copied) + output_bias.
    positions = np.array([[1, 2, 5, 9], [3, 4, 0, 0]], np.int32)
    logits = model(
        {
            "token_ids": ids,
            "segment_ids": segments,
            "padding_mask": mask,
            "mask_positions": positions,
        }
    )["logits"]
    expected = np.take_along_axis(ref["mlm_logits"], positions[..., None], 1)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_trainer_google_checkpoint_next_sentence_head_round_trips(tmp_path, corpus):
    """Continuing Google's pre-training keeps `cls/seq_relationship/*`: loaded into the
    sentence head, its logits are the reference's, and the Hugging Face export writes them
    back unchanged (the HF tests load that export again)."""
    wt = google_weights(np.random.default_rng(0))
    write_tf1_checkpoint(str(tmp_path / "bert_model.ckpt"), wt)
    raw = pretraining_config(corpus, tmp_path)
    raw["pretraining"] = {"packing": "segmentPairs", "sentencePrediction": "nextSentence"}
    task = task_of(raw)
    model = build_model(task)
    load_google_checkpoint(str(tmp_path / "bert_model.ckpt"), model, task)
    ids = np.random.default_rng(1).integers(5, V, (2, 16)).astype(np.int32)
    segments = (np.arange(16)[None] >= 8).astype(np.int32).repeat(2, 0)
    mask = np.ones((2, 16), np.int32)
    inputs = {"token_ids": ids, "segment_ids": segments, "padding_mask": mask}
    out = model({**inputs, "mask_positions": np.zeros((2, 4), np.int32)})
    expected = reference(wt, ids, segments, mask)["nsp_logits"]
    np.testing.assert_allclose(out["sentence_logits"], expected, atol=1e-4)
    saved = tf1_weights(model)
    for name, value in wt.items():
        if name != "global_step":
            np.testing.assert_array_equal(saved[name], value, err_msg=name)


@pytest.mark.parametrize(
    ("task", "drop", "fails", "named"),
    [
        ("pretraining", "bert/pooler/", False, "bert/pooler/dense/kernel"),
        ("classification", "bert/pooler/", True, "bert/pooler/dense/kernel"),
        ("classification", "cls/", False, "output_weights"),
        ("pretraining", "cls/predictions/", True, "cls/predictions/output_bias"),
    ],
)
def test_trainer_google_checkpoint_missing_heads(
    tmp_path, corpus, caplog, task, drop, fails, named
):
    wt = {
        k: v for k, v in google_weights(np.random.default_rng(0)).items() if not k.startswith(drop)
    }
    write_tf1_checkpoint(str(tmp_path / "bert_model.ckpt"), wt)
    bert_task = _task(corpus, tmp_path, task)
    model = build_model(bert_task)
    load = lambda: load_google_checkpoint(str(tmp_path / "bert_model.ckpt"), model, bert_task)  # noqa: E731
    if fails:
        with pytest.raises(TrainerError) as err:
            load()
        assert err.value.code == ExitCode.CHECKPOINT_MISMATCH and named in str(err.value)
    else:
        logger = logging.getLogger("berth_trainer")
        logger.addHandler(caplog.handler)
        try:
            load()
        finally:
            logger.removeHandler(caplog.handler)
        assert named in caplog.text


def test_trainer_google_checkpoint_wrong_shape_through_cli(tmp_path, corpus):
    write_tf1_checkpoint(
        str(tmp_path / "bert_model.ckpt"), google_weights(np.random.default_rng(0), vocab=V + 7)
    )
    cfg = pretraining_config(corpus, tmp_path)
    cfg["initCheckpoint"] = str(tmp_path / "bert_model.ckpt")
    result = run_cli(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    assert result.returncode == ExitCode.CHECKPOINT_MISMATCH, result.stdout[-2000:]
    message = (tmp_path / "term").read_text()
    assert (
        f"bert/embeddings/word_embeddings: checkpoint ({V + 7}, {H}) vs model ({V}, {H})" in message
    )
