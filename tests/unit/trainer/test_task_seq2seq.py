"""UniLM seq2seq: ROUGE-L and detokenization, the data layout, the model (the backbone's own
layers under the UniLM mask, the MLM head), static-shape greedy and beam decoding (also under
XLA), a tiny model learning to reverse word sequences through the CLI with its export
generating from raw strings in a fresh process, starting from an MLM checkpoint, two workers
with a step-exact resume, the reader (a BOM, files without examples) and bad rows named by
file and line."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from trainer_testlib import (
    TINY_MODEL,
    assert_task_resumes_on_two_workers,
    cli_env,
    failed_training,
    pretraining_config,
    run_cli,
    train_args,
    train_to_metrics,
    write_config,
)

from berth_trainer.config import TrainerConfig
from berth_trainer.data import ExampleEncoder
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.tasks.seq2seq import (
    BertSeq2Seq,
    Seq2Seq,
    detokenize,
    generate,
    lcs_length,
    rouge_l,
    source_only,
    text_metrics,
    unilm_attention_mask,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, CLS, SEP = 0, 2, 3
WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango",
]  # fmt: skip


def _write_data(path, n: int, seed: int, words: list[str] = WORDS) -> str:
    """3-6 distinct words; the target is them reversed."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = rng.sample(words, rng.randint(3, 6))
            f.write(json.dumps({"source": " ".join(w), "target": " ".join(reversed(w))}) + "\n")
    return str(path)


def _config(tmp_path, **training) -> dict:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join([*SPECIALS, *WORDS]) + "\n")
    return {
        "task": "seq2seq",
        "vocabulary": str(vocab),
        "model": dict(TINY_MODEL),
        "data": {
            "train": _write_data(tmp_path / "train.jsonl", 2048, 1),
            "validation": _write_data(tmp_path / "valid.jsonl", 64, 2),
            "format": "jsonl",
        },
        "seq2seq": {"maxTargetLength": 8, "beamSize": 2},
        "training": {
            "sequenceLength": 16,
            "globalBatchSize": 32,
            "steps": 1000,
            "learningRate": 0.004,
            "warmupSteps": 20,
            "logEverySteps": 50,
            **training,
        },
        "checkpoint": {"everySteps": 500},
        "output": {"dir": str(tmp_path / "out")},
    }


def _task(tmp_path, **seq2seq) -> Seq2Seq:
    raw = _config(tmp_path)
    raw["seq2seq"] |= seq2seq
    cfg = TrainerConfig.model_validate(raw)
    return Seq2Seq(cfg, ExampleEncoder(cfg, [*SPECIALS, *WORDS]))


def _backbone(vocabulary: int = 25, n: int = 16, seed: int = 0) -> keras_hub.models.BertBackbone:
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=n,
        dropout=0.0,
        name="bert",
    )


def _example_features(batch: int = 3, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """[CLS] 5 source words [SEP] 5 target words [SEP] [PAD]..."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 25, [batch, n]).astype(np.int32)
    tokens[:, 0], tokens[:, 6], tokens[:, 12], tokens[:, 13:] = CLS, SEP, SEP, PAD
    segments = np.zeros([batch, n], np.int32)
    segments[:, 7:13] = 1
    padding = (np.arange(n) < 13).astype(np.int32)[None].repeat(batch, 0)
    positions = np.tile(np.arange(6, 14), [batch, 1]).astype(np.int32)
    return {
        "token_ids": tokens,
        "segment_ids": segments,
        "padding_mask": padding,
        "mask_positions": positions,
    }


# --- pure functions ---


@pytest.mark.parametrize(
    ("a", "b", "length"),
    [
        ("", "", 0),
        ("a", "", 0),
        ("a b c", "a b c", 3),
        ("a b c d", "a c b d", 3),
        ("a b", "c d", 0),
        ("a a a", "a", 1),
        ("x a y b z c", "a b c", 3),
    ],
)
def test_lcs_length(a, b, length):
    assert lcs_length(a.split(), b.split()) == length == lcs_length(b.split(), a.split())


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("", "", 1.0),  # two empty texts agree
        ("", "a b", 0.0),
        ("a b", "", 0.0),
        ("a b c", "a b c", 1.0),
        ("c b a", "a b c", 1 / 3),  # LCS 1: P = R = 1/3
        ("a b", "a b c d", 2 * 1.0 * 0.5 / 1.5),  # P 1, R 1/2
        ("a x b y", "a b", 2 * 0.5 * 1.0 / 1.5),  # P 1/2, R 1
        ("d e f", "a b c", 0.0),
        ("  a   b ", "a b", 1.0),  # whitespace tokens
    ],
)
def test_rouge_l(prediction, reference, score):
    assert rouge_l(prediction, reference) == pytest.approx(score)


def test_text_metrics_averages_and_exact_match():
    m = text_metrics(["a b c", "c b a", ""], ["a b c", "a b c", "a"])
    assert m == {"rouge_l": pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-6), "exact_match": 0.333333}
    assert text_metrics([], []) == {"rouge_l": 0.0, "exact_match": 0.0}


@pytest.mark.parametrize(
    ("ids", "text"),
    [
        ([5, 6, 7, SEP, PAD], "alphabet soup"),
        ([5, SEP, 7, 7, 7], "alpha"),  # nothing after the first [SEP]
        ([SEP, 5, 6, 7, 7], ""),
        ([5, 7, 8, 8, 8], "alpha soup , , ,"),  # cut at T without [SEP]
        ([6, 5, PAD, PAD, PAD], "##bet alpha"),  # a leading continuation stays as it is
        ([5, PAD, 7, SEP, PAD], "alpha soup"),  # [PAD] is dropped
    ],
)
def test_detokenize(ids, text):
    vocab = tf.constant([*SPECIALS, "alpha", "##bet", "soup", ","])
    assert detokenize(tf.constant([ids]), vocab, SEP, PAD).numpy()[0].decode() == text


def test_unilm_mask_source_sees_source_target_sees_its_past():
    # [CLS] s [SEP] t t [SEP] [PAD]
    segments = tf.constant([[0, 0, 0, 1, 1, 1, 0]])
    padding = tf.constant([[1, 1, 1, 1, 1, 1, 0]])
    m = unilm_attention_mask(segments, padding)[0].numpy()
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 0],  # a padding query: never read
        ]
    )
    np.testing.assert_array_equal(m, expected)


def test_read_lays_out_source_and_target_and_cuts(tmp_path, caplog):
    task = _task(tmp_path, maxTargetLength=4)  # n 16: source up to 10 pieces, target 3 + [SEP]
    path = tmp_path / "rows.jsonl"
    rows = [
        {"source": "Alpha bravo", "target": "charlie delta"},
        {"source": " ".join(WORDS[:12]), "target": "echo golf hotel india kilo"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="berth_trainer"):
        task.prepare([str(path)], [])
        [encoded] = task.chunks(task.train_files, "data.train")
        [_] = task.chunks(task.train_files, "data.train")  # a second pass: no second warning
    assert task.labels is None and encoded.references == [r["target"] for r in rows]
    f, y = encoded.features, encoded.labels
    ids = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    a, b, c, d = (ids[w] for w in ("alpha", "bravo", "charlie", "delta"))
    assert f["token_ids"][0].tolist() == [CLS, a, b, SEP, c, d, SEP] + [PAD] * 9
    assert f["segment_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1] + [0] * 9
    assert f["padding_mask"][0].tolist() == [1] * 7 + [0] * 9
    assert f["mask_positions"][0].tolist() == [3, 4, 5, 6]  # each predicts the next piece
    assert y["target_ids"][0].tolist() == [c, d, SEP, PAD]
    assert y["target_weights"][0].tolist() == [1, 1, 1, 0]
    # The second row: 10 of 12 source words, 3 of 5 target words, then [SEP]; n = 16 exactly.
    source = [ids[w] for w in WORDS[:10]]
    target = [ids[w] for w in ("echo", "golf", "hotel")]
    assert f["token_ids"][1].tolist() == [CLS, *source, SEP, *target, SEP]
    assert f["segment_ids"][1].tolist() == [0] * 12 + [1] * 4
    assert f["mask_positions"][1].tolist() == [11, 12, 13, 14]
    assert y["target_ids"][1].tolist() == [*target, SEP]
    assert "cut 1 source(s) to 10 and 1 target(s) to 3" in caplog.text
    assert caplog.text.count("cut 1 source(s)") == 1
    for name, array in f.items():
        assert array.dtype == np.int32 and array.shape[1] == (4 if name == "mask_positions" else 16)
    # Generation starts from the source alone, packed as serving packs raw strings.
    start = source_only(f, PAD)
    served = tf.function(task.encode_sources)(tf.constant([r["source"] for r in rows]))
    for name, array in start.items():
        np.testing.assert_array_equal(served[name].numpy(), array, err_msg=name)
    assert start["target_start"].tolist() == [4, 12]


def test_reader_drops_a_bom_and_needs_examples(tmp_path):
    task = _task(tmp_path)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"source": "alpha", "target": "bravo"}).encode())
    [pair] = task.examples([str(path)], "data.train")
    assert (pair.source, pair.target, pair.where) == ("alpha", "bravo", f"{path}:1")
    for name, content in (("bom-only.jsonl", "\ufeff\n"), ("blank.jsonl", "\n  \r\n\n")):
        empty = tmp_path / name
        empty.write_text(content)
        for train, validation, field in (
            ([empty], [], "data.train"),
            ([path], [empty], "data.validation"),
        ):
            with pytest.raises(TrainerError) as err:
                task.prepare([str(f) for f in train], [str(f) for f in validation])
            assert err.value.code == ExitCode.DATA_INVALID
            assert str(err.value) == f"{field}: no examples in {[str(empty)]}"
    # A blank target fails when read (prepare); one the tokenizer empties (an accent that the
    # uncased vocabulary strips) when encoded.
    for target, caught in (("\u200b ", "prepare"), ("\u0301", "encode")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"source": "alpha", "target": target}) + "\n")
        if caught == "encode":
            task.prepare([str(bad)], [])  # it reads: only the tokenizer finds no word in it
        with pytest.raises(TrainerError) as err:
            if caught == "prepare":
                task.prepare([str(bad)], [])
            else:
                next(task.chunks([str(bad)], "data.train"))
        assert str(err.value) == f"data.train: {bad}:1: target {target!r} is empty (no word pieces)"


def test_references_are_normalised_like_the_tokenizer(tmp_path):
    task = _task(tmp_path)  # an uncased vocabulary: lower-cased, punctuation split off
    assert task.normalize(["Alpha,  BRAVO!", "", "x"]) == ["alpha , bravo !", "", "x"]


def test_loss_is_the_mean_over_weighted_target_pieces(tmp_path):
    task = _task(tmp_path)
    logits = np.full([2, 3, 6], -10.0, np.float32)
    logits[0, :, 4] = 10.0  # example 0: predicts 4, 4, 4
    logits[1, :, 5] = 10.0
    labels = {
        "target_ids": tf.constant([[4, 4, 1], [5, 2, 0]]),
        "target_weights": tf.constant([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
    }
    per_example, stats = task.loss({"logits": tf.constant(logits)}, labels)
    wrong = -tf.nn.log_softmax(logits[1, 1]).numpy()[2]
    np.testing.assert_allclose(per_example.numpy(), [0.0, 2 * wrong / 3], atol=1e-4)
    assert (stats["correct"].numpy(), stats["count"].numpy()) == (3.0, 5.0)


# --- the model ---


def test_model_reproduces_the_backbone_with_a_full_mask_and_round_trips():
    backbone = _backbone()
    model = BertSeq2Seq(backbone, sequence_length=16)
    f = _example_features()
    full = tf.broadcast_to(f["padding_mask"][:, None, :], [3, 16, 16])
    ours = model.sequence_output(f, attention_mask=full).numpy()
    theirs = backbone({k: f[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    np.testing.assert_allclose(ours, theirs["sequence_output"].numpy(), atol=1e-6)
    logits = model(f)["logits"]
    assert logits.shape == (3, 8, 25) and logits.dtype == tf.float32

    for clone in (keras.models.clone_model(model), type(model).from_config(model.get_config())):
        assert isinstance(clone, BertSeq2Seq)
        assert clone.mlm_head.token_embedding is clone.backbone.token_embedding
        assert clone.get_layer("mlm_head") is clone.mlm_head
        clone.set_weights(model.get_weights())
        np.testing.assert_allclose(clone(f)["logits"].numpy(), logits.numpy(), atol=1e-6)


def test_unilm_mask_hides_later_target_tokens():
    model = BertSeq2Seq(_backbone(), sequence_length=16)
    f = _example_features()
    before = model.sequence_output(f).numpy()
    changed = dict(f, token_ids=f["token_ids"].copy())
    changed["token_ids"][:, 9] = np.where(changed["token_ids"][:, 9] == 7, 8, 7)  # a target token
    after = model.sequence_output(changed).numpy()
    np.testing.assert_allclose(after[:, :9], before[:, :9], atol=1e-6)  # source and earlier target
    assert np.abs(after[:, 9:13] - before[:, 9:13]).min(axis=-1).max() > 0  # it and later changed
    assert np.abs(after[:, 9:13] - before[:, 9:13]).max() > 1e-3


# --- decoding ---

V = 8  # [PAD] [UNK] [CLS] [SEP] [MASK] a b c
A, B, C = 5, 6, 7


class Bigram:
    """A hand-made 'model': the next token's log-probabilities depend on the token at the
    mask position only (the last one written into the buffer)."""

    def __init__(self, table: dict[int, dict[int, float]]) -> None:
        logits = np.full([V, V], -30.0, np.float32)
        for previous, nexts in table.items():
            for token, p in nexts.items():
                logits[previous, token] = np.log(p)
        self.logits = tf.constant(logits)

    def __call__(self, inputs, training=False):
        last = tf.gather(inputs["token_ids"], inputs["mask_positions"], batch_dims=1)
        return {"logits": tf.gather(self.logits, last)}


def _sources(rows: list[list[int]], n: int = 12) -> dict[str, np.ndarray]:
    ids = [[CLS, *r, SEP] for r in rows]
    return {
        "token_ids": np.array([x + [PAD] * (n - len(x)) for x in ids], np.int32),
        "segment_ids": np.zeros([len(rows), n], np.int32),
        "padding_mask": np.array([[1] * len(x) + [0] * (n - len(x)) for x in ids], np.int32),
        "target_start": np.array([len(x) for x in ids], np.int32),
    }


#: After the source's [SEP]: a 0.5, b 0.4, c 0.1. After a: [SEP] 0.3, a/b 0.25, c 0.2 (greedy:
#: a [SEP], p 0.15). After b: [SEP] 0.9 (beam: b [SEP], p 0.36). After c: c forever.
BIGRAM = {
    SEP: {A: 0.5, B: 0.4, C: 0.1},
    A: {SEP: 0.3, A: 0.25, B: 0.25, C: 0.2},
    B: {SEP: 0.9, A: 0.1},
    C: {C: 1.0},
}


def test_beam_search_finds_a_better_sequence_than_greedy():
    model, f = Bigram(BIGRAM), _sources([[A], [B, C, A]])
    greedy, greedy_score = generate(model, f, 4, 1, SEP, PAD)
    assert greedy.numpy().tolist() == [[A, SEP, PAD, PAD]] * 2  # stops at [SEP], pads after
    np.testing.assert_allclose(greedy_score.numpy(), [np.log(0.15)] * 2, rtol=1e-5)
    beam, beam_score = generate(model, f, 4, 2, SEP, PAD)
    assert beam.numpy().tolist() == [[B, SEP, PAD, PAD]] * 2
    np.testing.assert_allclose(beam_score.numpy(), [np.log(0.36)] * 2, rtol=1e-5)
    # The first token from a "c" start is never [SEP]: exactly T tokens, no [SEP].
    loop = Bigram({**BIGRAM, SEP: {C: 1.0}})
    ids, score = generate(loop, f, 4, 3, SEP, PAD)
    assert ids.numpy().tolist() == [[C, C, C, C]] * 2
    np.testing.assert_allclose(score.numpy(), [0.0, 0.0], atol=1e-5)


def test_generate_compiles_with_xla_and_keeps_static_shapes():
    model, f = Bigram(BIGRAM), _sources([[A], [B, C, A], [C]])
    eager = generate(model, f, 5, 2, SEP, PAD)
    compiled = tf.function(lambda x: generate(model, x, 5, 2, SEP, PAD), jit_compile=True)
    ids, scores = compiled(f)
    assert ids.shape == (3, 5) and scores.shape == (3,)
    np.testing.assert_array_equal(ids.numpy(), eager[0].numpy())
    np.testing.assert_allclose(scores.numpy(), eager[1].numpy(), rtol=1e-6)


def _python_greedy(model, f: dict, steps: int) -> tuple[list[list[int]], list[float]]:
    """Greedy decoding one example and one token at a time, in Python."""
    out, scores = [], []
    for i in range(len(f["token_ids"])):
        x = {k: v[i : i + 1].copy() for k, v in f.items() if k != "target_start"}
        start, tokens, score = int(f["target_start"][i]), [], 0.0
        for t in range(steps):
            x["mask_positions"] = np.array([[start + t - 1]], np.int32)
            logits = model(x, training=False)["logits"][0, 0].numpy().astype(np.float64)
            log_probs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            token = int(np.argmax(logits))
            tokens.append(token)
            score += log_probs[token]
            x["token_ids"][0, start + t] = token
            x["segment_ids"][0, start + t] = 1
            x["padding_mask"][0, start + t] = 1
            if token == SEP:
                break
        out.append(tokens + [PAD] * (steps - len(tokens)))
        scores.append(score)
    return out, scores


def test_greedy_and_beam_on_a_bert():
    model = BertSeq2Seq(_backbone(seed=3), sequence_length=12)
    f = _sources([[5, 9, 11], [20, 7], [13, 13, 14, 15], [6]])
    expected, expected_scores = _python_greedy(model, f, 6)
    ids, scores = generate(model, f, 6, 1, SEP, PAD)
    assert ids.numpy().tolist() == expected
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-4)
    for k in (2, 4):
        beam_ids, beam_scores = generate(model, f, 6, k, SEP, PAD)
        assert (beam_scores.numpy() >= scores.numpy() - 1e-5).all(), (k, beam_scores, scores)
        assert (beam_scores.numpy() > scores.numpy() + 1).any()  # this model has better ones
        compiled = tf.function(lambda x, k=k: generate(model, x, 6, k, SEP, PAD), jit_compile=True)
        xla_ids, xla_scores = compiled(f)
        np.testing.assert_array_equal(xla_ids.numpy(), beam_ids.numpy())
        np.testing.assert_allclose(xla_scores.numpy(), beam_scores.numpy(), rtol=1e-4)


# --- through the CLI ---


@pytest.mark.slow
def test_seq2seq_learns_to_reverse_and_export_generates_from_raw_strings(tmp_path):
    metrics = train_to_metrics(_config(tmp_path), tmp_path)
    assert metrics["validation_rouge_l"] >= 0.9, metrics
    assert metrics["validation_exact_match"] >= 0.8, metrics
    assert metrics["initial_validation_rouge_l"] < 0.5, metrics
    hf = json.loads((tmp_path / "out" / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForMaskedLM"]  # the MLM head is the seq2seq head

    sources = ["Alpha bravo charlie delta", "tango kilo echo", "mike lima golf india juliet"]
    script = f"""
import json, tensorflow as tf, tensorflow_text
serve = tf.saved_model.load({str(tmp_path / "out" / "saved_model")!r}).signatures["serving_default"]
out = serve(source=tf.constant({sources!r}))
print(json.dumps({{"target": [t.decode() for t in out["target"].numpy()],
                  "ids": out["target_ids"].numpy().tolist()}}))
"""
    served = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), check=True
    )
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["target"] == [
        "delta charlie bravo alpha",
        "echo kilo tango",
        "juliet india golf lima mike",
    ], answer
    first = answer["ids"][1]
    assert len(first) == 8 and first[3] == SEP and first[4:] == [PAD] * 4


@pytest.mark.slow
def test_seq2seq_starts_from_a_pretraining_checkpoint(tmp_path, corpus):
    pre = pretraining_config(corpus, tmp_path / "pre", steps=10)
    pre["checkpoint"] = {"everySteps": 10, "dir": str(tmp_path / "pre-ckpt")}
    result = run_cli(train_args(write_config(tmp_path / "pre.yaml", pre), tmp_path / "t1"))
    assert result.returncode == 0, result.stdout[-3000:]

    words = [w for w in Path(corpus["vocab"]).read_text().split() if w.isalpha()]
    cfg = _config(tmp_path, steps=1, learningRate=1e-7, warmupSteps=0, seed=7)
    cfg["vocabulary"] = corpus["vocab"]
    cfg["data"] = {"train": _write_data(tmp_path / "t.jsonl", 64, 3, words), "format": "jsonl"}
    cfg["initCheckpoint"] = str(tmp_path / "pre-ckpt")
    cfg["checkpoint"] = {"everySteps": 1, "dir": str(tmp_path / "ckpt")}
    result = run_cli(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "t2"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "initialised from" in result.stdout

    before = tf.train.load_checkpoint(tf.train.latest_checkpoint(tmp_path / "pre-ckpt"))
    after = tf.train.load_checkpoint(tf.train.latest_checkpoint(tmp_path / "ckpt"))
    head = [
        k
        for k in before.get_variable_to_shape_map()
        if k.startswith("head/") and "OPTIMIZER_SLOT" not in k and k.endswith("VARIABLE_VALUE")
    ]
    assert len(head) >= 4, head  # dense kernel and bias, layer norm, output bias
    for key in head:  # one step at learning rate 1e-7 moves nothing measurably
        np.testing.assert_allclose(after.get_tensor(key), before.get_tensor(key), atol=1e-5)
    bias = next(k for k in head if "bias" in k and "dense" not in k and "norm" not in k)
    assert np.abs(before.get_tensor(bias)).max() > 1e-4  # pretraining moved it off zero


@pytest.mark.slow
def test_seq2seq_two_workers_resume_step_exact(tmp_path):
    assert_task_resumes_on_two_workers(_config(tmp_path), tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"source": "alpha bravo", "target": ""}, "target '' is empty (no word pieces)"),
        ({"source": "alpha bravo", "target": "  "}, "target '  ' is empty (no word pieces)"),
        ({"source": "", "target": "alpha"}, "source '' is empty (no word pieces)"),
        ({"source": "alpha"}, "missing field(s) ['target']"),
        ({"target": "alpha"}, "missing field(s) ['source']"),
    ],
)
def test_seq2seq_bad_rows_name_file_and_line(tmp_path, row, message):
    cfg = _config(tmp_path)
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"source": "alpha bravo", "target": "bravo alpha"})
    path.write_text(f"{good}\n{good}\n{json.dumps(row)}\n{good}\n")
    cfg["data"] = {**cfg["data"], "train": str(path)}
    cfg["data"].pop("validation")
    message_text = failed_training(cfg, tmp_path)
    assert f"data.train: {path}:3: {message}" in message_text
