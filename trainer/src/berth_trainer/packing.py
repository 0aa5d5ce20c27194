"""Packing tokenized documents into fixed-length pre-training examples, as the reference
implementations do. Pure Python and numpy (no TensorFlow), so the rules are tested directly.

A corpus is a list of documents; a document a list of sentences; a sentence a `Sentence` of
WordPiece ids (no [CLS]/[SEP]) and, per id, whether it starts a word (whole-word masking masks
the pieces of one word together). `pack` turns documents into `Example`s of exactly
`sequence_length` tokens:

- `fullSentences` (RoBERTa FULL-SENTENCES): consecutive sentences, crossing into the next
  document after a [SEP];
- `docSentences` (RoBERTa DOC-SENTENCES): the same, but an example never crosses a document;
- `segmentPairs` (Google BERT): [CLS] A [SEP] B [SEP] from one document, with the
  next-sentence (B is the continuation, or from another document) or sentence-order (A and B in
  order, or swapped) label;
- `none`: one sentence per example.

Only `none` and `segmentPairs`' truncation drop tokens, as their references do.

>>> s = lambda *ids: Sentence.of(list(ids))
>>> specials = Specials(pad=0, cls=2, sep=3)
>>> docs = [[s(10, 11), s(12)], [s(20, 21, 22)]]
>>> [e.token_ids.tolist() for e in pack(docs, "fullSentences", 8, specials, random.Random(0))]
[[2, 10, 11, 12, 3, 20, 21, 3], [2, 22, 3, 0, 0, 0, 0, 0]]
>>> [e.token_ids.tolist() for e in pack(docs, "docSentences", 8, specials, random.Random(0))]
[[2, 10, 11, 12, 3, 0, 0, 0], [2, 20, 21, 22, 3, 0, 0, 0]]
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Iterable, Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sentence:
    """WordPiece ids of one sentence and, per id, 1 where a word starts."""

    ids: np.ndarray
    word_starts: np.ndarray

    @staticmethod
    def of(ids: list[int], word_starts: list[int] | None = None) -> Sentence:
        starts = np.ones(len(ids), np.int32) if word_starts is None else word_starts
        return Sentence(np.asarray(ids, np.int32), np.asarray(starts, np.int32))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice) -> Sentence:
        ids, starts = self.ids[part], self.word_starts[part].copy()
        if len(starts):
            starts[0] = 1  # a word cut here starts afresh: never masked with a missing half
        return Sentence(ids, starts)


Document = list[Sentence]

#: segmentPairs draws a random next sentence from this many documents before and after.
NEIGHBOURS = 1000


@dataclasses.dataclass(frozen=True)
class Specials:
    pad: int
    cls: int
    sep: int

    @staticmethod
    def of(vocabulary: list[str]) -> Specials:
        """The ids of [PAD], [CLS] and [SEP] in a vocabulary."""
        return Specials(*(vocabulary.index(t) for t in ("[PAD]", "[CLS]", "[SEP]")))


@dataclasses.dataclass(frozen=True)
class Example:
    """One packed example; arrays have `sequence_length` entries, padding at the end."""

    token_ids: np.ndarray
    segment_ids: np.ndarray
    word_starts: np.ndarray
    sentence_label: int = 0


def _join(parts: list[Sentence]) -> Sentence:
    if not parts:
        return Sentence.of([])
    return Sentence(
        np.concatenate([p.ids for p in parts]), np.concatenate([p.word_starts for p in parts])
    )


def _example(
    segments: list[Sentence], sequence_length: int, sp: Specials, label: int = 0
) -> Example:
    """[CLS] seg0 [SEP] seg1 [SEP] …, padded; segment ids 0 for the first segment, then 1."""
    token_ids = np.full(sequence_length, sp.pad, np.int32)
    segment_ids = np.zeros(sequence_length, np.int32)
    word_starts = np.ones(sequence_length, np.int32)
    token_ids[0], at = sp.cls, 1
    for i, seg in enumerate(segments):
        end = at + len(seg)
        assert end < sequence_length, (end + 1, sequence_length)
        token_ids[at:end], word_starts[at:end], token_ids[end] = seg.ids, seg.word_starts, sp.sep
        if i:
            segment_ids[at : end + 1] = 1
        at = end + 1
    return Example(token_ids, segment_ids, word_starts, label)


def _pieces(sentences: Iterable[Sentence], size: int) -> Iterator[Sentence]:
    """Sentences split into pieces of at most `size` tokens (empty ones dropped)."""
    for s in sentences:
        for start in range(0, len(s), size):
            yield s[start : start + size]


def pack_sentences(
    documents: Iterable[Document], sequence_length: int, sp: Specials, cross_documents: bool
) -> Iterator[Example]:
    """fullSentences / docSentences: [CLS] tokens [SEP], every example filled to the brim.

    The document's sentences follow each other; the one that does not fit is split, its rest
    opening the next example (as Hugging Face's run_mlm `group_texts` does; RoBERTa kept
    sentences whole, at several per cent of padding). Crossing into the next document puts
    one [SEP] between them; docSentences ends the example with the document instead.
    """
    budget = sequence_length - 2
    sep = Sentence.of([sp.sep])
    buffer: list[Sentence] = []
    size = 0

    def emit(final: bool) -> Iterator[Example]:
        nonlocal buffer, size
        tokens = _join(buffer)
        while len(tokens) >= budget or (final and len(tokens)):
            head, tokens = tokens[:budget], tokens[budget:]
            if head.ids[-1] == sp.sep and len(head) > 1 and cross_documents:
                head = head[:-1]  # the example's own [SEP] ends the document
            yield _example([head], sequence_length, sp)
        # No rest starts with a document's [SEP]: a buffer reaching the budget is emitted
        # before the next document's [SEP] is appended.
        buffer, size = ([tokens] if len(tokens) else []), len(tokens)

    for doc in documents:
        if buffer and cross_documents:
            buffer.append(sep)
            size += 1
        for sentence in doc:
            buffer.append(sentence)
            size += len(sentence)
            if size >= budget:
                yield from emit(final=False)
        if not cross_documents:
            yield from emit(final=True)
    yield from emit(final=True)


def pack_pairs(
    documents: Iterable[Document],
    sequence_length: int,
    sp: Specials,
    rng: random.Random,
    objective: str,
    short_sequence_probability: float,
    window: int = NEIGHBOURS,
) -> Iterator[Example]:
    """segmentPairs, after Google BERT's `create_instances_from_document` (and ALBERT's
    sentence-order variant). Labels: nextSentence 0 = B follows A, 1 = B is random;
    sentenceOrder 0 = in order, 1 = swapped; none: always 0 (B follows A).

    A random B comes from another document among the `window` before and the `window` after
    this one in the stream (Google draws from the whole corpus, which it holds in memory; a
    stream holds only this window)."""
    max_tokens = sequence_length - 3

    def draw_target() -> int:
        if rng.random() < short_sequence_probability:
            return rng.randint(2, max_tokens)
        return max_tokens

    for doc, neighbours in _with_neighbours(documents, window):
        sentences = list(_pieces(doc, max_tokens))
        target, chunk, i = draw_target(), [], 0
        while i < len(sentences):
            chunk.append(sentences[i])
            if i == len(sentences) - 1 or sum(map(len, chunk)) >= target:
                (a, b, label), unused = _pair(chunk, neighbours, max_tokens, rng, objective)
                if len(a) and len(b):  # a lone one-token rest makes no pair
                    yield _example([a, b], sequence_length, sp, label)
                i -= unused  # sentences a random B displaced go back into the stream
                target, chunk = draw_target(), []
            i += 1


def _with_neighbours(
    documents: Iterable[Document], window: int
) -> Iterator[tuple[Document, list[Document]]]:
    """Each document with the (up to) `window` documents before and after it."""
    before: collections.deque[Document] = collections.deque(maxlen=window)
    after: collections.deque[Document] = collections.deque()
    stream = iter(documents)
    for doc in stream:
        after.append(doc)
        if len(after) > window:
            current = after.popleft()
            yield current, [*before, *after]
            before.append(current)
    while after:
        current = after.popleft()
        yield current, [*before, *after]
        before.append(current)


def _pair(
    chunk: list[Sentence],
    neighbours: list[Document],
    max_tokens: int,
    rng: random.Random,
    objective: str,
) -> tuple[tuple[Sentence, Sentence, int], int]:
    """(A, B, label) from one chunk, and how many of its sentences went unused."""
    if len(chunk) == 1:
        # One sentence: A and B are its halves (there is no other sentence to continue it,
        # and sentence order needs a true continuation).
        whole = chunk[0]
        half = max(1, len(whole) // 2)
        a, b_parts = [whole[:half]], [whole[half:]] if len(whole) > 1 else []
    else:
        split = rng.randint(1, len(chunk) - 1)
        a, b_parts = chunk[:split], chunk[split:]
    label = unused = 0
    if objective == "nextSentence" and neighbours and (not b_parts or rng.random() < 0.5):
        others = list(_pieces(rng.choice(neighbours), max_tokens))
        b_parts, need = [], max_tokens - sum(map(len, a))
        for s in others[rng.randrange(len(others)) :] if others else []:
            b_parts.append(s)
            if sum(map(len, b_parts)) >= need:
                break
        unused = len(chunk) - len(a) if len(chunk) > 1 else 0
        label = 1
    first, second = _join(a), _join(b_parts)
    if objective == "sentenceOrder" and len(second) and rng.random() < 0.5:
        first, second, label = second, first, 1
    first, second = _truncate_pair(first, second, max_tokens, rng)
    return (first, second, label), unused


def _truncate_pair(
    a: Sentence, b: Sentence, max_tokens: int, rng: random.Random
) -> tuple[Sentence, Sentence]:
    """Google's `truncate_seq_pair`: trim the longer one, from the front or back at random."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        trimmed = longer[1:] if rng.random() < 0.5 else longer[:-1]
        a, b = (trimmed, b) if longer is a else (a, trimmed)
    return a, b


def pack(
    documents: Iterable[Document],
    mode: str,
    sequence_length: int,
    sp: Specials,
    rng: random.Random,
    objective: str = "none",
    short_sequence_probability: float = 0.1,
    window: int = NEIGHBOURS,
) -> Iterator[Example]:
    """Examples of `mode` (a `config.Packing` value) from `documents` (any iterable: a
    stream is packed as it flows), in document order. Empty sentences and documents are
    skipped."""
    documents = (d for d in ([s for s in doc if len(s)] for doc in documents) if d)
    if mode == "segmentPairs":
        return pack_pairs(
            documents, sequence_length, sp, rng, objective, short_sequence_probability, window
        )
    if mode == "none":
        return (
            _example([s[: sequence_length - 2]], sequence_length, sp)
            for doc in documents
            for s in doc
        )
    return pack_sentences(documents, sequence_length, sp, cross_documents=mode == "fullSentences")
