"""Extractive question answering (SQuAD v1.1/v2.0): the official metric, span decoding,
windowing and the SQuAD reader as pure functions; a tiny model learning a synthetic SQuAD
through the CLI, its export answering raw strings in a fresh process exactly as validation
does; a SQuAD v2.0 run; two workers with a step-exact resume; and bad questions named by file
and line."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from trainer_testlib import (
    TINY_MODEL,
    assert_task_resumes_on_two_workers,
    cli_env,
    failed_training,
    train_to_metrics,
)

from berth_trainer.config import TrainerConfig
from berth_trainer.data import ExampleEncoder
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.tasks.question_answering import (
    Question,
    QuestionAnswering,
    Windows,
    answer_span,
    best_spans,
    choose_answers,
    decode,
    exact_match,
    f1_score,
    improve_answer_span,
    normalize_answer,
    parse_squad,
    squad_scores,
    window_labels,
)

THINGS = ["cat", "dog", "car", "sky", "tree", "house", "boat", "bird", "lamp", "road"]
ANSWERS = ["red", "blue", "green", "big", "small", "old", "new", "fast", "slow", "tall"]
FILLER = [
    "we", "walked", "home", "ate", "some", "bread", "today", "they", "sang", "near", "river",
    "sun", "rose", "over", "hills", "café", "naïve", "people", "often", "read", "books", "at",
    "night", "and", "slept", "late", "then", "went", "to", "town",
]  # fmt: skip
#: Lower-case, so the tokenizer lower-cases (keeping accents, or stripping them: both there).
WORDS = {*THINGS, *ANSWERS, *FILLER, "cafe", "naive"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(WORDS | {"what", "is", "the"})]
VOCAB += [".", "?", "1990", "##s"]

#: sequenceLength 64 and a 5-piece question leave 56 context pieces per window, so a context
#: of more than 56 pieces (up to 14 filler sentences of 5-7) has windows every 24 pieces.
QA = {"docStride": 24, "maxQueryLength": 8, "maxAnswerLength": 4}


def _fillers(rng: random.Random, n: int) -> str:
    """`n` sentences of 4-6 filler words."""
    return " ".join(
        " ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 6))) + " ." for _ in range(n)
    )


def _context(rng: random.Random, thing: str, answer: str, fillers: int, at: int | None = None):
    """Filler sentences and one "The <thing> is <answer>." (sentence `at`, else random)."""
    sentences = [_fillers(rng, 1) for _ in range(fillers)]
    at = rng.randint(0, fillers) if at is None else at
    before = " ".join(sentences[:at])
    text = " ".join([*sentences[:at], f"The {thing} is {answer}.", *sentences[at:]])
    start = len(before) + (1 if before else 0) + len(f"The {thing} is ")
    assert text[start : start + len(answer)] == answer
    return text, start


def _squad(seed: int, n: int, impossible: float = 0.0) -> dict:
    """`n` questions "What is the <thing>?" about synthetic contexts; a fraction `impossible`
    ask about a thing the context does not mention (only filler sentences): no answer."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        thing, answer = rng.choice(THINGS), rng.choice(ANSWERS)
        qa: dict = {"id": f"q{i}", "question": f"What is the {thing}?"}
        if rng.random() < impossible:
            text = _fillers(rng, rng.randint(2, 15))
            qa.update(answers=[], is_impossible=True)
        else:
            text, start = _context(rng, thing, answer, rng.randint(1, 14))
            qa["answers"] = [{"text": answer, "answer_start": start}]
        paragraphs.append({"context": text, "qas": [qa]})
    return {"version": "1.1", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}


def _write(path, doc: dict) -> str:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _config(tmp_path, train: int = 600, validation: int = 100, impossible=0.0, **training):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    data = {
        "train": _write(tmp_path / "train.json", _squad(1, train, impossible)),
        "format": "squad",
    }
    if validation:
        data["validation"] = _write(tmp_path / "dev.json", _squad(2, validation, impossible))
    return {
        "task": "questionAnswering",
        "vocabulary": str(vocab),
        "model": {**TINY_MODEL, "maxSequenceLength": 64},
        "data": data,
        "questionAnswering": {**QA, "allowNoAnswer": impossible > 0},
        "training": {
            "sequenceLength": 64,
            "globalBatchSize": 32,
            "steps": 200,
            "learningRate": 0.002,
            "warmupSteps": 20,
            "logEverySteps": 5,
            **training,
        },
        "checkpoint": {"everySteps": 100},
        "output": {"dir": str(tmp_path / "out")},
    }


def _task(n: int = 16, stride: int = 4, max_query: int = 4, max_answer: int = 5, v2=False):
    cfg = TrainerConfig.model_validate(
        {
            "task": "questionAnswering",
            "vocabulary": "vocab.txt",
            "data": {"train": "train.json", "format": "squad"},
            "output": {"dir": "out"},
            "model": {**TINY_MODEL, "maxSequenceLength": max(n, 32)},
            "training": {"sequenceLength": n},
            "questionAnswering": {
                "docStride": stride,
                "maxQueryLength": max_query,
                "maxAnswerLength": max_answer,
                "allowNoAnswer": v2,
            },
        }
    )
    return QuestionAnswering(cfg, ExampleEncoder(cfg, VOCAB))


def _questions(pairs: list[tuple[str, str]]) -> list[Question]:
    return [Question(f"q{i}", q, c, [], -1, lambda: "?") for i, (q, c) in enumerate(pairs)]


# --- the official SQuAD metric ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  a   cat\tand\nan  owl ", "cat and owl"),  # articles and runs of white space
        ("Theater", "theater"),  # "the" only as a word
        ("\u00a31,000.5", "\u00a310005"),  # ASCII punctuation only: £ stays
        ("l'été", "lété"),
        ("the", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "gold", "em", "f1"),
    [
        ("Denver Broncos", "Denver Broncos", 1.0, 1.0),
        ("the Denver Broncos.", "Denver Broncos", 1.0, 1.0),
        ("Broncos", "Denver Broncos", 0.0, 2 / 3),  # precision 1, recall 1/2
        ("Broncos Broncos", "Broncos", 0.0, 2 / 3),  # a repeated token counts once
        ("Carolina Panthers", "Denver Broncos", 0.0, 0.0),
        ("", "", 1.0, 1.0),  # v2.0: no answer predicted for no answer
        ("Broncos", "", 0.0, 0.0),
        ("", "Broncos", 0.0, 0.0),
    ],
)
def test_exact_match_and_f1(prediction, gold, em, f1):
    assert exact_match(prediction, gold) == em
    assert f1_score(prediction, gold) == pytest.approx(f1)


@pytest.mark.parametrize(
    ("predictions", "golds", "allow_no_answer", "expected"),
    [
        # Hugging Face's `squad` metric card: {'exact_match': 100.0, 'f1': 100.0} (in percent).
        (["1976"], [["1976"]], False, {"exact_match": 1.0, "f1": 1.0}),
        # The best gold answer counts; "Santa Clara" vs "Santa Clara, California": F1 0.8.
        (
            ["Santa Clara", "Denver"],
            [["Levi's Stadium", "Santa Clara, California"], ["Denver Broncos", "Broncos"]],
            False,
            {"exact_match": 0.0, "f1": 0.7333},
        ),
        # The `squad_v2` metric card: no answer predicted for a question without one.
        (
            ["", "1976"],
            [[], ["1976"]],
            True,
            {
                "exact_match": 1.0,
                "f1": 1.0,
                "has_answer_exact_match": 1.0,
                "has_answer_f1": 1.0,
                "no_answer_exact_match": 1.0,
                "no_answer_f1": 1.0,
            },
        ),
        # A gold answer that normalizes to "" is dropped; none left means no answer.
        (
            ["the", "", "x"],
            [["a"], ["1976"], ["x y"]],
            True,
            {
                "exact_match": 0.3333,
                "f1": 0.5556,
                "has_answer_exact_match": 0.0,
                "has_answer_f1": 0.3333,
                "no_answer_exact_match": 1.0,
                "no_answer_f1": 1.0,
            },
        ),
    ],
)
def test_squad_scores(predictions, golds, allow_no_answer, expected):
    assert squad_scores(predictions, golds, allow_no_answer) == expected


# --- choosing spans ----------------------------------------------------------------------------

_ALL = np.ones([1, 6], bool)


@pytest.mark.parametrize(
    ("start", "end", "start_ok", "end_ok", "max_length", "expected"),
    [
        # The highest start + end.
        ([[0, 1, 5, 0, 0, 0]], [[0, 0, 0, 4, 1, 0]], _ALL, _ALL, 5, (9.0, 0, 2, 3)),
        # An end before its start is no span: start 4 with end 1 would score 10.
        ([[0, 0, 0, 0, 5, 0]], [[0, 5, 0, 0, 0, 1]], _ALL, _ALL, 5, (6.0, 0, 4, 5)),
        # At most max_answer_length pieces: (1, 4) would score 10.
        ([[0, 5, 0, 0, 0, 0]], [[0, 0, 1, 0, 5, 0]], _ALL, _ALL, 2, (6.0, 0, 1, 2)),
        # Starts and ends outside the context (question, padding, the max-context rule).
        (
            [[9, 5, 0, 0, 0, 0]],
            [[9, 0, 0, 0, 0, 9]],
            [[0, 1, 1, 1, 0, 0]],
            [[0, 1, 1, 1, 1, 0]],
            5,
            (5.0, 0, 1, 1),
        ),
        # Across windows; on a tie the first window, then the first start.
        ([[0, 1, 0], [0, 3, 0]], [[0, 0, 1], [0, 0, 1]], None, None, 5, (4.0, 1, 1, 2)),
        ([[0, 2, 2], [0, 2, 2]], [[0, 0, 2], [0, 0, 2]], None, None, 5, (4.0, 0, 1, 2)),
        # No valid span at all.
        ([[1, 2]], [[3, 4]], [[0, 0]], [[1, 1]], 5, None),
    ],
)
def test_best_span(start, end, start_ok, end_ok, max_length, expected):
    start, end = np.array(start, np.float32), np.array(end, np.float32)
    start_ok = np.ones(start.shape, bool) if start_ok is None else np.array(start_ok, bool)
    end_ok = np.ones(start.shape, bool) if end_ok is None else np.array(end_ok, bool)
    assert best_span(start, end, start_ok, end_ok, max_length) == expected


def best_span(start, end, start_ok, end_ok, max_length):
    """`best_spans` of one question's windows: (score, window, start, end), or None."""
    best = best_spans(
        *map(tf.constant, (start, end, start_ok, end_ok)),
        tf.zeros([len(start)], tf.int32),
        1,
        max_length,
    )
    if not best["found"][0]:
        return None
    return (float(best["score"][0]), *(int(best[k][0]) for k in ("window", "start", "end")))


def _two_windows() -> Windows:
    """One question, context "aaa bbb ccc ddd eee" as 5 pieces in 2 windows of 3 (the second
    from piece 2), each at position 2: piece 2 has its most context in the first window."""
    return Windows(
        example=np.array([0, 0]),
        start=np.array([0, 2]),
        offset=np.array([2, 2]),
        length=np.array([3, 3]),
        context=np.array([[0, 0, 1, 1, 1, 0]] * 2, bool),
        max_context=np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0]], bool),
        byte_start=np.array([[0, 0, 0, 4, 8, 0], [0, 0, 8, 12, 16, 0]]),
        byte_end=np.array([[0, 0, 3, 7, 11, 0], [0, 0, 11, 15, 19, 0]]),
        piece_starts=[np.array([0, 4, 8, 12, 16])],
        piece_ends=[np.array([3, 7, 11, 15, 19])],
        contexts=["aaa bbb ccc ddd eee"],
        answers=[["ddd eee"]],
        ids=["q"],
    )


@pytest.mark.parametrize(
    ("null", "allow_no_answer", "answer"),
    [
        (0.0, True, "ddd eee"),  # the span (5) beats the no-answer score
        (6.0, True, ""),  # the no-answer score beats the span
        (6.0, False, "ddd eee"),  # SQuAD v1.1: always a span
        (5.0, True, "ddd eee"),  # a tie keeps the span
    ],
)
def test_no_answer_decision(null, allow_no_answer, answer):
    start = np.zeros([2, 6], np.float32)
    end = np.zeros([2, 6], np.float32)
    start[1, 3], end[1, 4] = 3, 2  # pieces 3..4 ("ddd eee") in the second window: score 5
    start[:, 0] = end[:, 0] = [50, null / 2]  # no-answer scores 100 and null: the min counts
    refs = _two_windows()
    assert decode(start, end, refs, 4, allow_no_answer) == [(answer, null if answer == "" else 5.0)]
    got = choose_answers(
        tf.constant(refs.contexts),
        tf.constant(start),
        tf.constant(end),
        {
            "example": tf.constant([0, 0]),
            "context": tf.constant([[False, False, True, True, True, False]] * 2),
            "max_context": tf.constant(refs.max_context),
            "byte_start": tf.constant([[0, 0, 0, 4, 8, 0], [0, 0, 8, 12, 16, 0]]),
            "byte_end": tf.constant([[0, 0, 3, 7, 11, 0], [0, 0, 11, 15, 19, 0]]),
        },
        4,
        allow_no_answer,
    )
    expected = (answer, 12, 19) if answer else ("", -1, -1)
    assert (got["answer"][0].numpy().decode(), int(got["start"][0]), int(got["end"][0])) == (
        expected
    )


def test_decode_and_the_graph_agree_on_random_logits():
    """`decode` (validation) and `choose_answers` (the export) choose the same answers, with
    the same character offsets, over many windows, non-ASCII text and no-answer decisions."""
    task = _task(n=16, stride=3, max_query=4, max_answer=3)
    rng = random.Random(0)
    pairs = []
    for _ in range(24):
        thing = rng.choice(THINGS)
        words = [rng.choice(FILLER) for _ in range(rng.randint(0, 30))]
        pairs.append((f"what is the {thing}?", " ".join(words)))
    questions = _questions(pairs)
    refs = task.encode(questions, "data.validation").references
    encode = task._compiled()[0]
    enc = encode(tf.constant([q for q, _ in pairs]), tf.constant([c for _, c in pairs]))
    logits = np.random.default_rng(0).normal(size=[2, len(refs.example), 16]).astype(np.float32)
    logits[:, refs.example % 2 == 0, 0] += 3  # some questions' no-answer scores win
    for allow in (False, True):
        expected = decode(logits[0], logits[1], refs, 3, allow)
        got = choose_answers(
            tf.constant([c for _, c in pairs]), *map(tf.constant, logits), enc, 3, allow
        )
        answers = [a.decode() for a in got["answer"].numpy()]
        assert answers == [a for a, _ in expected]
        assert got["score"].numpy() == pytest.approx([s for _, s in expected])
        for (_, context), a, s, e in zip(
            pairs, answers, got["start"].numpy(), got["end"].numpy(), strict=True
        ):
            assert (context[s:e] if a else (s, e)) == (a if a else (-1, -1))
        if allow:
            assert "" in answers[::2] and all(answers[1::2]), answers
        else:
            assert all(a or not c for a, (_, c) in zip(answers, pairs, strict=True)), answers
    assert any(len(c.encode()) != len(c) for _, c in pairs)  # non-ASCII text was exercised


# --- windows -----------------------------------------------------------------------------------


def _google_max_context(spans: list[tuple[int, int]], current: int, position: int) -> bool:
    """Google run_squad.py's `_check_is_max_context`."""
    best_score, best = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best_score is None or score > best_score:
                best_score, best = score, index
    return current == best


def _google_spans(total: int, room: int, stride: int) -> list[tuple[int, int]]:
    """Google run_squad.py's doc_spans (plus one empty window for an empty context)."""
    spans, start = [], 0
    while start < total:
        length = min(total - start, room)
        spans.append((start, length))
        if start + length == total:
            break
        start += min(length, stride)
    return spans or [(0, 0)]


def test_windows_layout_and_labels():
    task = _task(n=16, stride=4, max_query=4)
    context = "the cat is red . the dog is blue . the sky is 1990s . café naïve cat"
    questions = [
        Question("a", "what is the cat?", context, ["red"], context.index("red"), str),
        Question("b", "what is the sky?", context, ["1990"], context.index("1990"), str),
    ]
    enc = task.encode(questions, "data.train")
    accents = {"café": "cafe", "naïve": "naive"}  # either way
    tokens = [
        [accents.get(VOCAB[t], VOCAB[t]) for t in row if t] for row in enc.features["token_ids"]
    ]
    question = ["[CLS]", "what", "is", "the", "cat", "[SEP]"]  # 4 pieces: "?" cut
    assert tokens[:4] == [
        [*question, "the", "cat", "is", "red", ".", "the", "dog", "is", "blue", "[SEP]"],
        [*question, ".", "the", "dog", "is", "blue", ".", "the", "sky", "is", "[SEP]"],
        [*question, "blue", ".", "the", "sky", "is", "1990", "##s", ".", "cafe", "[SEP]"],
        [*question, "is", "1990", "##s", ".", "cafe", "naive", "cat", "[SEP]"],
    ]
    assert enc.features["segment_ids"][3].tolist() == [0] * 6 + [1] * 8 + [0] * 2
    assert enc.features["padding_mask"][3].tolist() == [1] * 14 + [0] * 2
    # "red": piece 3, in window 0 only; "1990" (of "1990s"): piece 13 ("1990", not "##s"),
    # in windows 2 and 3; elsewhere [CLS].
    assert enc.labels["start_position"].tolist() == [9, 0, 0, 0, 0, 0, 11, 7]
    assert enc.labels["end_position"].tolist() == enc.labels["start_position"].tolist()
    refs = enc.references
    assert refs.example.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert refs.start.tolist() == [0, 4, 8, 12] * 2 and refs.length.tolist() == [9, 9, 9, 7] * 2
    raw = context.encode()
    words = [
        raw[a:b].decode() for a, b in zip(refs.piece_starts[0], refs.piece_ends[0], strict=True)
    ]
    assert words[12:] == ["is", "1990s", "1990s", ".", "café", "naïve", "cat"]


@pytest.mark.parametrize(("n", "stride", "max_query"), [(16, 4, 4), (16, 1, 2), (20, 7, 6)])
def test_windows_follow_google(n, stride, max_query):
    """Window starts, lengths and the max-context rule are Google's, for contexts of 0 to 40
    pieces."""
    task = _task(n=n, stride=stride, max_query=max_query)
    rng = random.Random(n + stride)
    contexts = [" ".join(rng.choice(THINGS) for _ in range(k)) for k in range(0, 41, 3)]
    refs = task.encode(_questions([("what is the cat ?", c) for c in contexts]), "f").references
    lq = min(max_query, 5)
    for e, c in enumerate(contexts):
        rows = np.nonzero(refs.example == e)[0]
        spans = _google_spans(len(c.split()), n - lq - 3, stride)
        assert [(refs.start[w], refs.length[w]) for w in rows] == spans
        for k, w in enumerate(rows):
            assert refs.offset[w] == lq + 2
            expected = [_google_max_context(spans, k, spans[k][0] + x) for x in range(spans[k][1])]
            assert refs.max_context[w, lq + 2 : lq + 2 + spans[k][1]].tolist() == expected
            assert not refs.max_context[w, : lq + 2].any()


@pytest.mark.parametrize(
    ("starts", "ends", "answer", "expected"),
    [
        ([0, 4, 8], [3, 7, 12], (4, 7), (1, 1)),
        ([0, 4, 4, 9], [3, 8, 8, 12], (5, 8), (1, 2)),  # inside a word: its pieces
        ([0, 4, 8], [3, 7, 12], (2, 9), (0, 2)),
        ([0, 4], [3, 7], (3, 4), None),  # only a space
    ],
)
def test_answer_span(starts, ends, answer, expected):
    assert answer_span(np.array(starts), np.array(ends), *answer) == expected


@pytest.mark.parametrize(
    ("pieces", "span", "answer", "expected"),
    [
        ([5, 7, 8, 9], (1, 2), [7], (1, 1)),  # "1990" of "1990 ##s"
        ([5, 7, 8, 9], (1, 2), [8], (2, 2)),
        ([5, 7, 8, 9], (0, 3), [7, 8], (1, 2)),
        ([5, 7, 8, 9], (1, 2), [6], (1, 2)),  # not found: the words' span
    ],
)
def test_improve_answer_span(pieces, span, answer, expected):
    assert improve_answer_span(pieces, span, answer) == expected


def test_window_labels():
    starts, ends = window_labels(
        np.array([0, 0, 0, 1, 2]),
        np.array([0, 3, 6, 0, 0]),
        np.array([4, 4, 4, 5, 3]),
        np.array([5, 5, 4, 3, 6]),
        {0: (4, 5), 2: (5, 5)},
    )
    # Question 0's answer (pieces 4-5): in window 1 (pieces 3-7) only (window 0 ends at 4);
    # question 1 has no answer; question 2's in its window.
    assert starts.tolist() == [0, 5, 0, 0, 8]
    assert ends.tolist() == [0, 6, 0, 0, 8]


# --- the model ---------------------------------------------------------------------------------


def test_model_head_outputs_loss_and_clones():
    from berth_trainer.modeling import build_backbone

    task = _task(n=16)
    model = task.build(build_backbone(task.cfg, len(VOCAB)))
    assert model.get_layer("qa_head").kernel.shape == (64, 2)
    for clone in (keras.models.clone_model(model), type(model).from_config(model.get_config())):
        assert clone.get_layer("qa_head").kernel.shape == (64, 2)
    features = {k: np.ones([3, 16], np.int32) for k in ("token_ids", "segment_ids", "padding_mask")}
    out = model(features)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "start_logits": ((3, 16), "float32"),
        "end_logits": ((3, 16), "float32"),
    }
    logits = model.get_layer("qa_head")(model.get_layer("bert")(features)["sequence_output"])
    np.testing.assert_allclose(out["start_logits"], logits[..., 0], rtol=1e-6)
    np.testing.assert_allclose(out["end_logits"], logits[..., 1], rtol=1e-6)

    start = tf.constant([[0.0, 2, 0], [1, 0, 0]])
    end = tf.constant([[0.0, 0, 3], [0, 0, 1]])
    labels = {"start_position": tf.constant([1, 1]), "end_position": tf.constant([2, 0])}
    loss, stats = task.loss({"start_logits": start, "end_logits": end}, labels)
    ce = keras.losses.sparse_categorical_crossentropy
    expected = (
        ce(labels["start_position"], start, from_logits=True)
        + ce(labels["end_position"], end, from_logits=True)
    ) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert (float(stats["correct"]), float(stats["count"])) == (1.0, 2.0)


def test_served_graph_takes_empty_batches_and_empty_texts():
    from berth_trainer.modeling import build_backbone

    task = _task(n=16)
    model = task.build(build_backbone(task.cfg, len(VOCAB)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    def answer(question, context):
        enc = task.windows(question, context)
        out = model({k: enc[k] for k in ("token_ids", "segment_ids", "padding_mask")})
        return choose_answers(context, out["start_logits"], out["end_logits"], enc, 5, False)

    empty = answer(tf.constant([], tf.string), tf.constant([], tf.string))
    assert {k: v.shape for k, v in empty.items()} == {k: (0,) for k in empty}
    got = answer(tf.constant(["", "what is the cat?"]), tf.constant(["the cat is red", ""]))
    assert got["answer"].numpy()[1] == b"" and got["start"].numpy()[1] == -1
    assert got["answer"].numpy()[0].decode() in "the cat is red"


# --- reading SQuAD JSON ------------------------------------------------------------------------


def _doc(qas: list, context: str = "The cat is red.") -> dict:
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


_GOOD = {
    "id": "good",
    "question": "What is the cat?",
    "answers": [{"text": "red", "answer_start": 11}],
}


def _line_of(text: str, needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth]


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        (
            {**_GOOD, "id": "moved", "answers": [{"text": "red", "answer_start": 4}]},
            "question 'moved': answer 'red' is not at answer_start 4 of its context",
        ),
        (
            {**_GOOD, "id": "none", "answers": []},
            "question 'none' has no answer (an empty answers list); set "
            "questionAnswering.allowNoAnswer",
        ),
        (
            {**_GOOD, "id": "v2", "answers": [], "is_impossible": True},
            "question 'v2' has no answer (is_impossible: true (SQuAD v2.0)); set "
            "questionAnswering.allowNoAnswer",
        ),
        (
            {"id": "noq", "answers": _GOOD["answers"]},
            "question 'noq': missing key(s) ['question']",
        ),
        (
            {**_GOOD, "id": "nostart", "answers": [{"text": "red"}]},
            "question 'nostart': an answer without key(s) ['answer_start']",
        ),
    ],
)
def test_parse_squad_names_the_line_of_a_bad_question(qa, message):
    text = json.dumps(_doc([_GOOD, qa]), indent=2)
    with pytest.raises(TrainerError) as err:
        parse_squad(text, "dev.json", "data.validation", False)
    assert err.value.code == ExitCode.DATA_INVALID
    line = _line_of(text, f'"id": "{qa["id"]}"')
    assert str(err.value).startswith(f"data.validation: dev.json:{line}: {message}"), err.value


def _error(text: str, allow_no_answer: bool = False) -> str:
    with pytest.raises(TrainerError) as err:
        parse_squad(text, "f.json", "data.train", allow_no_answer)
    assert err.value.code == ExitCode.DATA_INVALID
    return str(err.value)


def test_parse_squad_lines_of_repeated_ids_and_one_line_files():
    bad = {**_GOOD, "answers": [{"text": "cat", "answer_start": 0}]}
    text = json.dumps(_doc([_GOOD, _GOOD, bad]), indent=1)  # the third "good" is bad
    line = _line_of(text, '"id": "good"', 2)
    assert _error(text).startswith(f"data.train: f.json:{line}: question 'good': answer 'cat'")
    one_line = json.dumps(_doc([_GOOD, bad]))
    assert _error(one_line).startswith("data.train: f.json:1: question 'good': answer 'cat'")
    no_id = {k: v for k, v in _GOOD.items() if k != "id"}
    text = json.dumps(_doc([_GOOD, no_id]), indent=1)
    line = _line_of(text, '"question"', 1)
    assert _error(text).startswith(f"data.train: f.json:{line}: question None: missing key(s)")
    assert _error('{"data": [\n\n  oops]}').startswith("data.train: f.json:3: invalid JSON")


def test_an_answer_of_no_word_is_a_bad_row():
    """An answer of only characters the word split drops (a control character)."""
    question = Question("x", "what?", "cat \x07 dog", ["\x07"], 4, lambda: "f.json:7")
    with pytest.raises(TrainerError) as err:
        _task().encode([question], "data.train")
    assert str(err.value) == (
        "data.train: f.json:7: question 'x': answer '\\x07' covers no word of its context"
    )


def test_reading_drops_a_bom_and_names_the_line_of_a_byte_not_utf8(tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(_doc([_GOOD]), indent=2).encode())
    task = _task()
    assert [(q.id, q.answers) for q in task.examples([str(bom)], "data.train")] == [
        ("good", ["red"])
    ]
    latin = tmp_path / "latin.json"
    text = (
        '{"data": [{"title": "t",\n "paragraphs": [{"qas": '
        + json.dumps([_GOOD])
        + ',\n "context": "The cat is red. Caf\u00e9."}]}]}'
    )
    latin.write_bytes(text.encode("latin-1"))
    assert _line_of(text, "Caf") == 3
    with pytest.raises(TrainerError) as err:
        list(task.examples([str(latin)], "data.train"))
    assert err.value.code == ExitCode.DATA_INVALID
    assert str(err.value).startswith(f"data.train: {latin}:3: not UTF-8 text"), err.value


def test_parse_squad_keeps_all_answers_and_no_answers():
    second = {"text": "Red.", "answer_start": 11}
    qa2 = {**_GOOD, "id": "two", "answers": [*_GOOD["answers"], second]}
    v2 = {"id": "v2", "question": "What is the dog?", "answers": [], "is_impossible": True}
    got = parse_squad(json.dumps(_doc([qa2, v2])), "f.json", "data.validation", True)
    assert [(q.id, q.answers, q.answer_start) for q in got] == [
        ("two", ["red", "Red."], 11),
        ("v2", [], -1),
    ]


# --- through the CLI -----------------------------------------------------------------------------

SERVE = """
import json, sys, tensorflow as tf, tensorflow_text
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
inputs = json.loads(sys.stdin.read())
out = serve(question=tf.constant(inputs["question"]), context=tf.constant(inputs["context"]))
print(json.dumps({k: [x.decode() if isinstance(x, bytes) else x.item() for x in v.numpy()]
                  for k, v in out.items()}))
"""


def _serve(saved_model, questions: list[str], contexts: list[str]) -> dict:
    """The export's answers, in a fresh process."""
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(saved_model)],
        input=json.dumps({"question": questions, "context": contexts}),
        capture_output=True,
        text=True,
        env=cli_env(),
        check=True,
        timeout=300,
    )
    return json.loads(served.stdout.strip().splitlines()[-1])


def _python_answers(out, questions: list[Question]) -> tuple[list[str], Windows]:
    """Validation's answers (`score`'s decoding of the model's outputs) of the trained
    model.keras."""
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("labels", None)
    cfg = TrainerConfig.model_validate(cfg)
    task = QuestionAnswering(cfg, ExampleEncoder(cfg, VOCAB))
    model = keras.saving.load_model(out / "model.keras")
    encoded = task.encode(questions, "data.validation")
    outputs = model.predict(encoded.features, batch_size=32, verbose=0)
    return [a for a, _ in task.score(model, encoded, outputs)], encoded.references


@pytest.mark.slow
def test_question_answering_learns_and_export_answers_raw_strings(tmp_path):
    cfg = _config(tmp_path)
    metrics = train_to_metrics(cfg, tmp_path)
    out = tmp_path / "out"
    assert metrics["validation_exact_match"] >= 0.9, metrics
    assert metrics["validation_f1"] >= 0.9, metrics
    assert metrics["initial_validation_exact_match"] < 0.5, metrics
    hf = json.loads((out / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForQuestionAnswering"]

    rng = random.Random(7)
    long_context, at = _context(rng, "bird", "green", 14, at=13)  # the answer in a later window
    accented = "Café naïve café . We ate bread . The boat is slow."
    short = "The lamp is tall. We sang near the river ."
    asked = [("What is the bird?", long_context), ("what is the boat?", accented)]
    asked += [("What is the lamp?", short)]
    questions = _questions(asked)
    dev = parse_squad((tmp_path / "dev.json").read_text(), "dev.json", "v", False)
    python, refs = _python_answers(out, questions + dev)
    assert python[:3] == ["green", "slow", "tall"]
    assert len(np.nonzero(refs.example == 0)[0]) >= 3  # the long context's windows
    served = _serve(
        out / "saved_model",
        [q.question for q in questions + dev],
        [q.context for q in questions + dev],
    )
    assert served["answer"] == python
    for q, a, s, e in zip(
        questions + dev, served["answer"], served["start"], served["end"], strict=True
    ):
        assert q.context[s:e] == a
    assert (served["start"][0], served["start"][1]) == (at, accented.index("slow"))
    assert all(np.isfinite(served["score"]))


@pytest.mark.slow
def test_question_answering_v2_trains_and_exports_no_answers(tmp_path):
    """SQuAD v2.0 (allowNoAnswer): trains, reports has/no-answer scores, and the export
    answers "" exactly where validation does."""
    cfg = _config(tmp_path, impossible=0.3, steps=200)
    metrics = train_to_metrics(cfg, tmp_path)
    out = tmp_path / "out"
    for key in ("exact_match", "f1", "has_answer_f1", "no_answer_f1"):
        assert metrics[f"validation_{key}"] >= 0.9, metrics

    dev = parse_squad((tmp_path / "dev.json").read_text(), "dev.json", "v", True)
    python, _ = _python_answers(out, dev)
    served = _serve(out / "saved_model", [q.question for q in dev], [q.context for q in dev])
    assert served["answer"] == python
    empty = [i for i, a in enumerate(served["answer"]) if a == ""]
    assert len(empty) >= 10 and [i for i, q in enumerate(dev) if not q.answers] == empty
    assert all(served["start"][i] == served["end"][i] == -1 for i in empty)


@pytest.mark.slow
def test_question_answering_two_workers_resume_step_exact(tmp_path):
    assert_task_resumes_on_two_workers(_config(tmp_path, train=200, validation=0), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("qa", "message"),
    [
        (
            {**_GOOD, "id": "moved", "answers": [{"text": "red", "answer_start": 3}]},
            "question 'moved': answer 'red' is not at answer_start 3 of its context",
        ),
        (
            {**_GOOD, "id": "none", "answers": []},
            "question 'none' has no answer (an empty answers list)",
        ),
        (
            {**_GOOD, "id": "v2", "answers": [], "is_impossible": True},
            "question 'v2' has no answer (is_impossible: true (SQuAD v2.0)); set "
            "questionAnswering.allowNoAnswer: true",
        ),
        ({"id": "noq", "answers": []}, "question 'noq': missing key(s) ['question']"),
    ],
)
def test_question_answering_bad_questions_name_file_and_line(tmp_path, qa, message):
    cfg = _config(tmp_path, train=1, validation=0)
    path = tmp_path / "bad.json"
    text = json.dumps(_doc([_GOOD, qa]), indent=2)
    path.write_text(text)
    cfg["data"]["train"] = str(path)
    message_text = failed_training(cfg, tmp_path)
    line = _line_of(text, f'"id": "{qa["id"]}"')
    assert f"data.train: {path}:{line}: {message}" in message_text
