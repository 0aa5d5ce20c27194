"""Packing of pre-training examples (`packing.pack`), the text reader's documents, slices and
word starts (`corpus.documents`) and whole-word masking (`tasks.pretraining.whole_word_mask`).

Hand-made corpora number their word ids 10, 11, 12, … in corpus order, so a run of ids is
contiguous in its source exactly when consecutive ids differ by one, and `where` tells each
id's (document, sentence).
"""

from __future__ import annotations

import functools
import itertools
import random

import jieba
import numpy as np
import pytest
import tensorflow as tf

from berth_trainer.corpus import documents
from berth_trainer.corpus.documents import Tokenize, slice_parts
from berth_trainer.packing import Example, Sentence, Specials, pack
from berth_trainer.tasks.pretraining import whole_word_mask
from berth_trainer.vocab import SPECIAL_TOKENS, load_vocabulary, make_tokenizer, ragged_ids

SP = Specials(pad=0, cls=2, sep=3)
MODES = ("fullSentences", "docSentences", "segmentPairs", "none")


def _corpus(seed: int, docs: int, sentences: tuple[int, int], lengths: tuple[int, int]):
    """Documents of sentences with ids counting up from 10 (random word starts, 1 at each
    sentence's first id); also id → (document, sentence) and id → source word start."""
    rng = random.Random(seed)
    out, where, starts, next_id = [], {}, {}, 10
    for d in range(docs):
        doc = []
        for s in range(rng.randint(*sentences)):
            ids = list(range(next_id, next_id + rng.randint(*lengths)))
            next_id += len(ids)
            ws = [1] + [int(rng.random() < 0.6) for _ in ids[1:]]
            where.update((i, (d, s)) for i in ids)
            starts.update(zip(ids, ws, strict=True))
            doc.append(Sentence.of(ids, ws))
        out.append(doc)
    return out, where, starts


def _flat(documents) -> list[int]:
    return [int(i) for doc in documents for s in doc for i in s.ids]


def _length(e: Example) -> int:
    """Tokens before the padding (checking that padding only follows them)."""
    real = e.token_ids != SP.pad
    k = int(real.sum())
    assert real[:k].all() and not real[k:].any(), e.token_ids
    return k


def _words(e: Example) -> list[int]:
    return [int(i) for i in e.token_ids if i not in (SP.pad, SP.cls, SP.sep)]


def _contiguous(run: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(run))


def _segments(e: Example, n: int) -> tuple[list[int], list[int]]:
    """A and B of [CLS] A [SEP] B [SEP] pad…, checking that format and the segment ids."""
    k = _length(e)
    ids = e.token_ids.tolist()
    seps = [i for i in range(k) if ids[i] == SP.sep]
    assert ids[0] == SP.cls and SP.cls not in ids[1:], ids
    assert len(seps) == 2 and seps[1] == k - 1, ids
    a, b = ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]
    assert a and b, ids
    assert len(a) + len(b) <= n - 3
    expected = [0] * (seps[0] + 1) + [1] * (k - seps[0] - 1) + [0] * (n - k)
    assert e.segment_ids.tolist() == expected, (ids, e.segment_ids)
    return a, b


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("n", "lengths", "seed"), [(8, (1, 12), 0), (13, (1, 5), 1), (64, (1, 90), 2)]
)
def test_every_mode_packs_fixed_length_examples_of_source_runs(mode, n, lengths, seed):
    docs, where, starts = _corpus(seed, 25, (1, 6), lengths)
    examples = list(pack(docs, mode, n, SP, random.Random(seed)))
    assert examples
    for e in examples:
        assert e.token_ids.shape == e.segment_ids.shape == e.word_starts.shape == (n,)
        k = _length(e)
        assert e.token_ids[0] == SP.cls and e.token_ids[k - 1] == SP.sep, e.token_ids
        ids = e.token_ids.tolist()
        for p in range(n):  # word starts: the source's, 1 where a run was cut or at specials
            kept = p > 0 and ids[p] >= 10 and ids[p - 1] == ids[p] - 1
            assert e.word_starts[p] == (starts[ids[p]] if kept else 1), (p, ids, e.word_starts)
        if mode == "segmentPairs":
            a, b = _segments(e, n)
            assert _contiguous(a) and _contiguous(b), ids
            assert len({where[i][0] for i in a + b}) == 1, ids
        else:
            assert _contiguous(_words(e)), ids
    flat_out = [i for e in examples for i in _words(e)]
    if mode in ("fullSentences", "docSentences"):
        assert flat_out == _flat(docs)
    if mode == "docSentences":
        assert all(len({where[i][0] for i in _words(e)}) == 1 for e in examples)
        assert all(_length(e) == len(_words(e)) + 2 for e in examples)
    if mode == "none":
        expected = [s.ids[: n - 2].tolist() for doc in docs for s in doc if len(s)]
        assert [_words(e) for e in examples] == expected


@pytest.mark.parametrize(
    ("n", "lengths", "seed"), [(8, (1, 3), 0), (9, (1, 12), 1), (16, (1, 6), 2), (40, (1, 30), 3)]
)
def test_full_sentences_put_one_sep_between_documents(n, lengths, seed):
    docs, where, _ = _corpus(seed, 40, (1, 4), lengths)
    examples = list(pack(docs, "fullSentences", n, SP, random.Random(0)))
    first = {int(doc[0].ids[0]) for doc in docs}
    last = {int(doc[-1].ids[-1]) for doc in docs}
    crossings = 0
    for e in examples:
        k = _length(e)
        assert e.token_ids[1] != SP.sep, e.token_ids
        assert not e.segment_ids.any(), e.segment_ids
        inner = e.token_ids[1 : k - 1].tolist()
        parts = " ".join(map(str, inner)).split(f" {SP.sep} ")
        runs = [[int(i) for i in p.split()] for p in parts]
        assert all(runs) and all(SP.sep not in r for r in runs), e.token_ids  # no [SEP][SEP]
        for r in runs:
            assert _contiguous(r) and where[r[0]][0] == where[r[-1]][0], e.token_ids
        for r, following in itertools.pairwise(runs):  # a [SEP] is a document boundary
            assert r[-1] in last and following[0] in first, e.token_ids
            assert where[following[0]][0] == where[r[-1]][0] + 1
        crossings += len(runs) - 1
    assert crossings > 0  # the corpus does put several documents into one example


@pytest.mark.parametrize(("n", "short"), [(8, 0.0), (12, 0.5), (32, 0.1), (128, 0.0)])
def test_segment_pairs_without_objective_continue_a_with_b(n, short):
    docs, where, _ = _corpus(n, 30, (1, 7), (2, 20))
    examples = list(pack(docs, "segmentPairs", n, SP, random.Random(0), "none", short))
    assert len(examples) >= 30
    previous_doc = 0
    for e in examples:
        a, b = _segments(e, n)
        assert e.sentence_label == 0
        assert _contiguous(a) and _contiguous(b), e.token_ids
        doc = where[a[0]][0]
        assert {where[i][0] for i in a + b} == {doc}, e.token_ids
        assert doc >= previous_doc  # in document order
        previous_doc = doc
        assert b[0] > a[-1], e.token_ids
        if len(a) + len(b) < n - 3:  # not truncated: B starts right where A ends
            assert b[0] == a[-1] + 1, e.token_ids


@pytest.mark.parametrize("objective", ["none", "nextSentence", "sentenceOrder"])
@pytest.mark.parametrize("seed", [0, 1])
def test_segment_pairs_use_each_sentence_once_in_order(objective, seed):
    """One-token sentences are never truncated: each document is its examples' A then B in
    source order, but for a random B, whose displaced sentences open the next example. Only a
    document's lone last sentence can be left out (one token makes no pair, as in Google's)."""
    docs, where, _ = _corpus(seed, 40, (1, 30), (1, 1))
    covered: list[list[int]] = [[] for _ in docs]
    for e in pack(docs, "segmentPairs", 16, SP, random.Random(seed), objective, 0.0):
        a, b = _segments(e, 16)
        if objective == "nextSentence" and e.sentence_label:
            b = []
        elif objective == "sentenceOrder" and e.sentence_label:
            a, b = b, a
        covered[where[a[0]][0]] += a + b
    for got, doc in zip(covered, docs, strict=True):
        full = _flat([doc])
        assert got in (full, full[:-1]), (got, full)


#: Documents before and after one that a random B may come from, in `_pairs`.
WINDOW = 5


def _pairs(objective: str, seed: int):
    """Pairs of a corpus streamed once (a generator: nothing can look back at it), a random B
    drawn from the `WINDOW` documents on either side."""
    docs, where, _ = _corpus(100 + seed, 150, (2, 8), (2, 12))
    stream = (d for d in docs)
    examples = list(
        pack(stream, "segmentPairs", 32, SP, random.Random(seed), objective, 0.0, WINDOW)
    )
    assert len(examples) >= 200
    out = []
    for e in examples:
        a, b = _segments(e, 32)
        assert _contiguous(a) and _contiguous(b), e.token_ids
        assert where[a[0]][0] == where[a[-1]][0] and where[b[0]][0] == where[b[-1]][0]
        out.append((a, b, e.sentence_label, len(a) + len(b) < 32 - 3))
    ones = sum(label for _, _, label, _ in out) / len(out)
    assert 0.35 <= ones <= 0.65, ones
    return out, where


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_next_sentence_b_follows_a_or_comes_from_another_document(seed):
    pairs, where = _pairs("nextSentence", seed)
    for a, b, label, untruncated in pairs:
        assert label in (0, 1)
        if label == 0:
            assert where[b[0]][0] == where[a[-1]][0] and b[0] > a[-1], (a, b)
            if untruncated:
                assert b[0] == a[-1] + 1, (a, b)
        else:
            assert 0 < abs(where[b[0]][0] - where[a[0]][0]) <= WINDOW, (a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sentence_order_keeps_or_swaps_two_runs_of_one_document(seed):
    pairs, where = _pairs("sentenceOrder", seed)
    for a, b, label, untruncated in pairs:
        assert where[a[0]][0] == where[b[0]][0], (a, b)
        assert label in (0, 1)
        first, second = (a, b) if label == 0 else (b, a)
        assert second[0] > first[-1], (label, a, b)
        if untruncated:
            assert second[0] == first[-1] + 1, (label, a, b)


@pytest.mark.parametrize(("mode", "low", "high"), [("fullSentences", 0.95, 1.0), ("none", 0, 0.5)])
def test_non_padding_fraction_of_short_lines(mode, low, high):
    rng = random.Random(7)
    docs, next_id, total = [], 10, 0
    while total < 2000:
        doc = []
        for _ in range(min(rng.randint(3, 10), 2000 - total)):
            n = rng.randint(5, 40)
            doc.append(Sentence.of(list(range(next_id, next_id + n))))
            next_id += n
        total += len(doc)
        docs.append(doc)
    examples = list(pack(docs, mode, 128, SP, random.Random(0)))
    fraction = float(np.mean([e.token_ids != SP.pad for e in examples]))
    assert low <= fraction <= high, fraction


# --- read_documents and whole-word masking, with a real WordPiece tokenizer -------------------

ENGLISH = "the a cat dog bird sat on mat un ##believ ##able play ##ing ##ed ##s run ##ning jump"
ENGLISH += " happi ##ness ."
LINES = [
    "The cats played on the mat.",
    "Unbelievable happiness.",
    "a dog jumped",
    "running birds sat on the mat",
    "the cat played unbelievable running jumps",
    "happiness",
    "a bird runs on the dog",
    "the dogs jumping",
]


def read_documents(paths, tokenizer, vocabulary, whole_word, shard=(0, 1)):
    """The tokenized documents of slice `shard` (index, count) of `paths`."""
    lines = documents.read_documents(slice_parts(paths, *shard), "data.train")
    return list(Tokenize(tokenizer, vocabulary, whole_word)(lines))


@functools.cache
def _ids(vocabulary: tuple[str, ...]):
    """The tokenizer's ids function, traced once per vocabulary."""
    return ragged_ids(make_tokenizer(list(vocabulary)))


def _vocabulary(tmp_path, words: list[str]) -> tuple[list[str], object]:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")
    vocabulary = load_vocabulary(str(path))
    return vocabulary, _ids(tuple(vocabulary))


def _write_documents(path, documents: list[list[str]], sep: str = "\n\n") -> str:
    path.write_text(sep.join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("files", [1, 2])
def test_read_documents_shards_are_disjoint_and_cover_the_corpus(tmp_path, count, files):
    vocabulary, tokenizer = _vocabulary(tmp_path, ENGLISH.split())
    texts = [[LINES[(d + j) % len(LINES)] for j in range(d + 1)] for d in range(7)]  # distinct
    if files == 1:
        paths = [_write_documents(tmp_path / "a.txt", texts, "\n\n\n")]
    else:  # the first file ends without a blank line: a file's end still ends its document
        (tmp_path / "a.txt").write_text("\n\n".join("\n".join(d) for d in texts[:4]))
        paths = [str(tmp_path / "a.txt"), _write_documents(tmp_path / "b.txt", texts[4:])]

    def key(doc):
        return tuple(tuple(s.ids.tolist()) for s in doc)

    everything = [key(d) for d in read_documents(paths, tokenizer, vocabulary, "none")]
    assert [len(d) for d in everything] == [len(t) for t in texts]
    assert len(set(everything)) == len(texts)
    shards = [
        [key(d) for d in read_documents(paths, tokenizer, vocabulary, "none", (i, count))]
        for i in range(count)
    ]
    assert all(shards)
    assert sum(map(len, shards)) == len(everything)
    assert set().union(*map(set, shards)) == set(everything)
    for i in range(count):
        for j in range(i + 1, count):
            assert not set(shards[i]) & set(shards[j])


def _word_groups(ids: np.ndarray, starts: np.ndarray, special: np.ndarray) -> list[list[int]]:
    """Positions of each word: a start and the non-special 0-start positions after it."""
    words: list[list[int]] = []
    for p in range(len(ids)):
        if special[p]:
            continue
        if starts[p] or p == 0 or special[p - 1]:
            words.append([p])
        else:
            words[-1].append(p)
    return words


def _check_whole_word_masking(examples, vocabulary, rate, max_predictions, runs=200):
    mask_id = vocabulary.index("[MASK]")
    masked_total = as_mask = well_posed = 0
    tf.random.set_seed(0)  # once: each call draws afresh (a per-call set_seed costs ~20 ms)
    for run in range(runs):
        e = examples[run % len(examples)]
        ids = e.token_ids
        special = np.isin(ids, [SP.pad, SP.cls, SP.sep])
        words = _word_groups(ids, e.word_starts, special)
        budget = min(max_predictions, max(1, round(rate * int((~special).sum()))))
        fits = max(map(len, words)) <= budget  # every word fits, so one is always masked
        well_posed += fits
        m = whole_word_mask(
            tf.constant(ids),
            tf.constant(e.word_starts),
            tf.constant(~special),
            rate,
            max_predictions,
            mask_id,
            len(vocabulary),
        )
        out, positions = m["token_ids"].numpy(), m["mask_positions"].numpy()
        mask_ids, weights = m["mask_ids"].numpy(), m["mask_weights"].numpy()
        assert positions.shape == mask_ids.shape == weights.shape == (max_predictions,)
        assert out.shape == ids.shape
        assert set(weights.tolist()) <= {0.0, 1.0} and (np.diff(weights) <= 0).all(), weights
        chosen = positions[weights == 1]
        masked = set(chosen.tolist())
        assert len(masked) == len(chosen), positions
        assert int(fits) <= len(masked) <= budget <= max_predictions, (len(masked), budget)
        assert not special[chosen].any(), (ids, positions)
        for word in words:
            assert set(word) <= masked or not set(word) & masked, (ids, e.word_starts, positions)
        assert (mask_ids[weights == 1] == ids[chosen]).all(), (ids, positions, mask_ids)
        assert not mask_ids[weights == 0].any() and not positions[weights == 0].any()
        assert set(np.flatnonzero(out != ids).tolist()) <= masked, (ids, out, positions)
        masked_total += len(chosen)
        as_mask += int((out[chosen] == mask_id).sum())
    assert 0.65 <= as_mask / masked_total <= 0.95, as_mask / masked_total  # 80% [MASK]
    assert well_posed >= runs * 0.6, well_posed


@pytest.mark.parametrize(("rate", "max_predictions"), [(0.15, 20), (0.5, 5)])
def test_whole_word_masking_of_word_pieces(tmp_path, rate, max_predictions):
    vocabulary, tokenizer = _vocabulary(tmp_path, ENGLISH.split())
    path = _write_documents(tmp_path / "a.txt", [LINES[:5], LINES[5:], LINES])
    docs = read_documents([path], tokenizer, vocabulary, "wordPiece")
    sentences = [s for doc in docs for s in doc]
    assert [vocabulary[i] for i in sentences[1].ids] == [
        "un",
        "##believ",
        "##able",
        "happi",
        "##ness",
        ".",
    ]
    assert sentences[1].word_starts.tolist() == [1, 0, 0, 1, 0, 1]
    for s in sentences:
        assert s.word_starts.tolist() == [int(not vocabulary[i].startswith("##")) for i in s.ids]
    assert sum(int((s.word_starts == 0).sum()) for s in sentences) >= 10
    examples = list(pack(docs, "fullSentences", 32, SP, random.Random(0)))
    assert len(examples) >= 3
    _check_whole_word_masking(examples, vocabulary, rate, max_predictions)


CHINESE = ["我爱北京天安门。今天天气很好", "北京今天天气很好。", "我爱天安门", "今天我很好"]


@pytest.mark.parametrize(("rate", "max_predictions"), [(0.15, 20), (0.3, 6)])
def test_whole_word_masking_of_chinese_words(tmp_path, rate, max_predictions):
    characters = sorted({c for line in CHINESE for c in line})
    vocabulary, tokenizer = _vocabulary(tmp_path, characters)
    path = _write_documents(tmp_path / "zh.txt", [CHINESE, CHINESE[::-1]])
    docs = read_documents([path], tokenizer, vocabulary, "chinese")
    assert [len(d) for d in docs] == [4, 4]
    for line, s in zip(CHINESE + CHINESE[::-1], [s for d in docs for s in d], strict=True):
        assert [vocabulary[i] for i in s.ids] == list(line)
        expected = [int(k == 0) for w in jieba.lcut(line) if w.strip() for k in range(len(w))]
        assert s.word_starts.tolist() == expected, (line, jieba.lcut(line))
    assert not docs[0][0].word_starts.all()  # 北京, 天安门, 今天天气: several characters
    examples = list(pack(docs, "fullSentences", 32, SP, random.Random(0)))
    _check_whole_word_masking(examples, vocabulary, rate, max_predictions)


# --- edge cases: an empty B, an empty document, a word longer than the masking budget --------


@pytest.mark.parametrize("objective", ["none", "sentenceOrder"])
def test_segment_pairs_never_leave_b_empty(objective):
    s = Sentence.of
    docs = [[s([10, 11, 12, 13, 14, 15])], [s([20, 21])]]  # 6 tokens: pieces of 5 and 1 at n=8
    for e in pack(docs, "segmentPairs", 8, SP, random.Random(0), objective, 0.0):
        assert _segments(e, 8)[1], e.token_ids


def test_full_sentences_skip_an_empty_document():
    s = Sentence.of
    docs = [[s([10])], [s([])], [s([20])]]  # e.g. a document whose only line is "\u200b"
    examples = pack(docs, "fullSentences", 8, SP, random.Random(0))
    assert [e.token_ids.tolist() for e in examples] == [[2, 10, 3, 20, 3, 0, 0, 0]]


def test_whole_word_mask_leaves_out_words_longer_than_the_budget():
    ids = tf.constant([2, 10, 11, 12, 13, 3, 0, 0])  # words (10 11 12) and (13): budget is 1
    starts = tf.constant([1, 1, 0, 0, 1, 1, 1, 1])
    selectable = tf.constant([False, True, True, True, True, False, False, False])
    tf.random.set_seed(0)
    for _ in range(20):
        m = whole_word_mask(ids, starts, selectable, 0.15, 4, 4, 20)
        assert m["mask_weights"].numpy().tolist() == [1, 0, 0, 0]
        assert m["mask_positions"].numpy()[0] == 4 and m["mask_ids"].numpy()[0] == 13
