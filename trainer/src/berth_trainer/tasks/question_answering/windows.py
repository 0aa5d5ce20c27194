"""Windows: a question and its context → model inputs of `sequenceLength` pieces, and the
positions of the answer in them (Google's `run_squad.py`).

The context is split into words (`text.split_words`, the BERT basic tokenizer's split, with
byte offsets) and word pieces; the question keeps at most `maxQueryLength` pieces; a context
longer than one window of `sequenceLength - question - 3` pieces is cut into windows starting
every `docStride` pieces. Each window is one row: `[CLS] question [SEP] window [SEP]`
(segment 0, then 1 from the window on). Its labels are the positions of the answer's first and
last piece, or 0 (`[CLS]`) when the answer is not inside the window or there is none. The
answer's pieces are its words' pieces, narrowed to the pieces of the answer text itself when it
starts or ends inside a word (`improve_answer_span`). The same graph ops (`windows`) encode the
training data and the served requests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from berth_trainer.tasks.text import split_words, word_pieces


@dataclasses.dataclass
class Windows:
    """The windows of a chunk of questions (`Encoded.references`): what `decoding` needs to
    turn their logits into answers, and what the metrics compare the answers with."""

    #: Per window `[windows]`: its question (an index into the chunk), its first context
    #: piece, the position of that piece in the window (question pieces + 2) and its context
    #: pieces.
    example: np.ndarray
    start: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    #: `[windows, sequenceLength]`: a context piece; … with its most context in this window;
    #: the UTF-8 byte offsets of its word in the context (0 elsewhere).
    context: np.ndarray
    max_context: np.ndarray
    byte_start: np.ndarray
    byte_end: np.ndarray
    #: Per question: UTF-8 byte offsets of the words of its context pieces, the context, the
    #: gold answers and the ids.
    piece_starts: list[np.ndarray]
    piece_ends: list[np.ndarray]
    contexts: list[str]
    answers: list[list[str]]
    ids: list[str]


def windows(
    tokenizer,
    question: tf.Tensor,
    context: tf.Tensor,
    *,
    sequence_length: int,
    max_query_length: int,
    doc_stride: int,
    ids: tuple[int, int, int, int],
) -> dict[str, tf.Tensor]:
    """Questions and contexts `[batch]` → all their windows `[windows, sequence_length]`
    (see the module docstring), in order of question; `ids` are [CLS], [SEP], [PAD], [UNK].

    Per window: `token_ids`, `segment_ids`, `padding_mask`; `example` (its question), the
    context pieces it holds (`window_start`, `length`) and where they start (`offset`);
    per position: `context` (a context piece), `max_context` (… with its most context here),
    `byte_start`/`byte_end` (its word's UTF-8 offsets in the context). Per question (ragged):
    the context's `pieces` and their words' `piece_starts`/`piece_ends`.
    """
    cls_id, sep_id, pad_id, unk_id = ids
    n, stride = sequence_length, doc_stride
    q = word_pieces(tokenizer, split_words(question)[0], unk_id).merge_dims(1, 2)
    q = q[:, :max_query_length]
    words, word_starts, word_ends = split_words(context)
    pieces = word_pieces(tokenizer, words, unk_id)
    c = pieces.merge_dims(1, 2)
    word_of_piece = pieces.values.value_rowids()
    piece_starts = tf.cast(tf.gather(word_starts.flat_values, word_of_piece), tf.int32)
    piece_ends = tf.cast(tf.gather(word_ends.flat_values, word_of_piece), tf.int32)

    lq = tf.cast(q.row_lengths(), tf.int32)
    total = tf.cast(c.row_lengths(), tf.int32)
    room = n - 3 - lq  # context pieces per window
    count = 1 + (tf.maximum(total - room, 0) + stride - 1) // stride
    example = tf.repeat(tf.range(tf.size(lq)), count)
    k = tf.range(tf.reduce_sum(count)) - tf.gather(tf.cumsum(count, exclusive=True), example)
    room_w, total_w, count_w = (tf.gather(x, example) for x in (room, total, count))
    lq_w = tf.gather(lq, example)
    start = k * stride
    length = tf.minimum(room_w, total_w - start)
    offset = lq_w + 2

    def col(x):
        return x[:, None]

    j = tf.range(n)[None, :]
    is_q = (j >= 1) & (j <= col(lq_w))
    is_c = (j >= col(offset)) & (j < col(offset + length))
    p = col(start) + j - col(offset)  # context piece at each position (where is_c)

    def take(flat: tf.Tensor, row_starts: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        flat = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)  # never empty
        i = col(tf.gather(tf.cast(row_starts, tf.int32), example)) + index
        return tf.gather(flat, tf.clip_by_value(i, 0, tf.size(flat) - 1))

    q_tok = take(q.flat_values, q.row_starts(), j - 1)
    c_tok = take(c.flat_values, c.row_starts(), p)
    end_sep = col(offset + length)
    token_ids = tf.where(
        j == 0,
        cls_id,
        tf.where(
            is_q,
            q_tok,
            tf.where(
                j == col(lq_w + 1),
                sep_id,
                tf.where(is_c, c_tok, tf.where(j == end_sep, sep_id, pad_id)),
            ),
        ),
    )
    segment_ids = tf.cast((j >= col(offset)) & (j <= end_sep), tf.int32)
    padding_mask = tf.cast(j <= end_sep, tf.int32)
    byte_start = tf.where(is_c, take(piece_starts, c.row_starts(), p), 0)
    byte_end = tf.where(is_c, take(piece_ends, c.row_starts(), p), 0)

    # Max context (Google's _check_is_max_context), in integers: 100 * min(left, right) + length.
    reach = -(-(n - 3) // stride)  # windows sharing a piece are fewer than this apart
    other = col(k)[:, :, None] + tf.range(-reach, reach + 1)[None, None, :]  # [w, 1, d]
    other_start = other * stride
    other_length = tf.minimum(room_w[:, None, None], total_w[:, None, None] - other_start)
    pp = p[:, :, None]
    holds = (
        (other >= 0)
        & (other < count_w[:, None, None])
        & (pp >= other_start)
        & (pp < other_start + other_length)
    )
    other_score = 100 * tf.minimum(pp - other_start, other_start + other_length - 1 - pp)
    other_score += other_length
    own = 100 * tf.minimum(p - col(start), col(start + length) - 1 - p) + col(length)
    own = own[:, :, None]
    beaten = holds & ((other_score > own) | ((other_score == own) & (other < col(k)[:, :, None])))
    max_context = is_c & ~tf.reduce_any(beaten, -1)
    return {
        "token_ids": tf.cast(token_ids, tf.int32),
        "segment_ids": segment_ids,
        "padding_mask": padding_mask,
        "example": example,
        "window_start": start,
        "offset": offset,
        "length": length,
        "context": is_c,
        "max_context": max_context,
        "byte_start": byte_start,
        "byte_end": byte_end,
        "pieces": tf.cast(c, tf.int32),
        "piece_starts": c.with_flat_values(piece_starts),
        "piece_ends": c.with_flat_values(piece_ends),
    }


def answer_span(
    piece_starts: np.ndarray, piece_ends: np.ndarray, begin: int, end: int
) -> tuple[int, int] | None:
    """First and last context piece whose word overlaps the answer's bytes [begin, end).

    >>> answer_span(np.array([0, 4, 4, 9]), np.array([3, 8, 8, 12]), 5, 8)
    (1, 2)
    """
    hits = np.nonzero((piece_starts < end) & (piece_ends > begin))[0]
    return (int(hits[0]), int(hits[-1])) if len(hits) else None


def improve_answer_span(
    pieces: list[int], span: tuple[int, int], answer: list[int]
) -> tuple[int, int]:
    """The sub-span of `span` whose pieces are exactly the answer text's (Google's
    `_improve_answer_span`: the answer "1990" of the word "1990s" is the piece `1990`, not
    `1990 ##s`), else `span`.

    >>> improve_answer_span([5, 7, 8, 9], (1, 2), [7])
    (1, 1)
    """
    first, last = span
    for new_first in range(first, last + 1):
        for new_last in range(last, new_first - 1, -1):
            if pieces[new_first : new_last + 1] == answer:
                return new_first, new_last
    return span


def window_labels(
    example: np.ndarray,
    start: np.ndarray,
    offset: np.ndarray,
    length: np.ndarray,
    spans: dict[int, tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of each window's answer: the answer's pieces (`spans`, per
    question with an answer) if the window holds both, else 0 ([CLS]).

    >>> window_labels(np.array([0, 0, 1]), np.array([0, 4, 0]), np.array([3, 3, 4]),
    ...               np.array([6, 4, 5]), {0: (5, 6)})
    (array([0, 4, 0], dtype=int32), array([0, 5, 0], dtype=int32))
    """
    starts = np.zeros(len(example), np.int32)
    ends = np.zeros(len(example), np.int32)
    for w, e in enumerate(example):
        span = spans.get(int(e))
        if span is not None and start[w] <= span[0] and span[1] < start[w] + length[w]:
            starts[w] = offset[w] + span[0] - start[w]
            ends[w] = offset[w] + span[1] - start[w]
    return starts, ends
