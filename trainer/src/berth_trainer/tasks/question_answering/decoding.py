"""Choosing each question's answer from its windows' start and end logits: ONE implementation
in graph ops (`choose_answers`), served by the export and run by validation (`decode`, on the
numpy outputs of a validation chunk), so both answer alike.

Over all windows of a question, the answer is the span with the highest start + end logit whose
end is not before its start, at most `maxAnswerLength` pieces long, inside the context, and
whose start piece has its most context in that window (Google's "max context": `min(left,
right) + 0.01 * window length` is largest, the first window on ties); on equal scores the first
in (window, start, end) order. Its text is the context between the start of its first word and
the end of its last word (the original text, not word pieces). With allowNoAnswer the no-answer
score is the smallest `start_logits[0] + end_logits[0]` over the windows; if it beats the best
span, the answer is "". A question without any valid span answers "" (with the no-answer
score) either way.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from berth_trainer.tasks.text import to_char_offsets

if TYPE_CHECKING:
    from berth_trainer.tasks.question_answering.windows import Windows


def best_spans(
    start_logits: tf.Tensor,
    end_logits: tf.Tensor,
    start_ok: tf.Tensor,
    end_ok: tf.Tensor,
    example: tf.Tensor,
    questions: tf.Tensor | int,
    max_answer_length: int,
) -> dict[str, tf.Tensor]:
    """The best span of each of `questions` over its windows `[windows, n]` (`example`: the
    question of each window): `found` (a valid span exists), `score` (start + end logit),
    `window`, `start`, `end` (positions in that window), per question. A span is valid where
    `start_ok[start]`, `end_ok[end]` and start <= end < start + max_answer_length; the first in
    (window, start, end) order wins a tie.

    >>> best = best_spans(tf.constant([[0.0, 3, 1, 0]]), tf.constant([[0.0, 0, 1, 2]]),
    ...                   tf.constant([[0, 1, 1, 1]]) > 0, tf.constant([[0, 1, 1, 1]]) > 0,
    ...                   tf.constant([0]), 1, 2)
    >>> {k: v.numpy().tolist() for k, v in best.items()}
    {'found': [True], 'score': [4.0], 'window': [0], 'start': [1], 'end': [2]}
    """
    n = start_logits.shape[1]
    band = min(max_answer_length, n)
    total = tf.shape(example)[0]
    ends = tf.range(n)[:, None] + tf.range(band)[None, :]  # [n, band]
    inside = ends < n
    ends = tf.minimum(ends, n - 1)
    e = tf.gather(end_logits, ends, axis=1)  # [w, n, band]
    valid = start_ok[:, :, None] & tf.gather(end_ok, ends, axis=1) & inside[None]
    scores = tf.reshape(tf.where(valid, start_logits[:, :, None] + e, -np.inf), [total, -1])
    has = tf.reduce_any(tf.reshape(valid, [total, -1]), -1)
    window_best = tf.reduce_max(scores, -1)
    flat = tf.range(n * band)[None, :]
    first_best = tf.reduce_min(tf.where(scores == window_best[:, None], flat, n * band), -1)

    best = tf.math.unsorted_segment_max(tf.where(has, window_best, -np.inf), example, questions)
    found = tf.math.unsorted_segment_max(tf.cast(has, tf.int32), example, questions) > 0
    candidate = has & tf.equal(window_best, tf.gather(best, example))
    w = tf.math.unsorted_segment_min(
        tf.where(candidate, tf.range(total), total), example, questions
    )
    w = tf.minimum(w, tf.maximum(total - 1, 0))
    pick = tf.gather(first_best, w)
    return {
        "found": found,
        "score": best,
        "window": w,
        "start": pick // band,
        "end": pick // band + pick % band,
    }


def choose_answers(
    context: tf.Tensor,
    start_logits: tf.Tensor,
    end_logits: tf.Tensor,
    enc: dict[str, tf.Tensor],
    max_answer_length: int,
    allow_no_answer: bool,
) -> dict[str, tf.Tensor]:
    """The answers (see the module docstring) to the questions about `context` `[batch]`
    from the logits of their windows, `enc` being (at least `example`, `context`,
    `max_context`, `byte_start` and `byte_end` of) `windows(…, context)`: per question `answer`,
    `start`/`end` (character offsets in its context, -1 for no answer) and `score`."""
    batch = tf.shape(context)[0]
    example = enc["example"]
    best = best_spans(
        start_logits,
        end_logits,
        enc["max_context"],
        enc["context"],
        example,
        batch,
        max_answer_length,
    )
    w, i, j = best["window"], best["start"], best["end"]
    byte_start = tf.gather(tf.gather(enc["byte_start"], w), i[:, None], batch_dims=1)[:, 0]
    byte_end = tf.gather(tf.gather(enc["byte_end"], w), j[:, None], batch_dims=1)[:, 0]
    null = tf.math.unsorted_segment_min(start_logits[:, 0] + end_logits[:, 0], example, batch)
    no_answer = ~best["found"]
    if allow_no_answer:
        no_answer |= null > best["score"]
    byte_start = tf.where(no_answer, 0, byte_start)
    byte_end = tf.where(no_answer, 0, byte_end)
    text = tf.strings.substr(context, byte_start, byte_end - byte_start, unit="BYTE")
    offsets = tf.stack([byte_start, byte_end], 1)
    chars = to_char_offsets(context, tf.RaggedTensor.from_tensor(offsets)).to_tensor(
        shape=[None, 2]
    )
    chars = tf.cast(chars, tf.int32)
    return {
        "answer": tf.where(no_answer, "", text),
        "start": tf.where(no_answer, -1, chars[:, 0]),
        "end": tf.where(no_answer, -1, chars[:, 1]),
        "score": tf.where(no_answer, null, best["score"]),
    }


@functools.cache
def _compiled(n: int, max_answer_length: int, allow_no_answer: bool):
    """`choose_answers` as one graph for windows of `n` positions."""
    text = tf.TensorSpec([None], tf.string)
    logits = tf.TensorSpec([None, n], tf.float32)
    enc = {
        "example": tf.TensorSpec([None], tf.int32),
        "context": tf.TensorSpec([None, n], tf.bool),
        "max_context": tf.TensorSpec([None, n], tf.bool),
        "byte_start": tf.TensorSpec([None, n], tf.int32),
        "byte_end": tf.TensorSpec([None, n], tf.int32),
    }
    return tf.function(
        lambda context, start, end, enc: choose_answers(
            context, start, end, enc, max_answer_length, allow_no_answer
        ),
        input_signature=[text, logits, logits, enc],
    )


def decode(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    refs: Windows,
    max_answer_length: int,
    allow_no_answer: bool,
) -> list[tuple[str, float]]:
    """Each question's (answer text, score) of a chunk's windows `refs`, from their logits
    `[windows, n]`: `choose_answers` (the export's graph) on numpy arrays, for validation."""
    enc = {
        "example": refs.example,
        "context": refs.context,
        "max_context": refs.max_context,
        "byte_start": refs.byte_start,
        "byte_end": refs.byte_end,
    }
    choose = _compiled(start_logits.shape[1], max_answer_length, allow_no_answer)
    got = choose(
        tf.constant(refs.contexts, tf.string),
        tf.constant(start_logits, tf.float32),
        tf.constant(end_logits, tf.float32),
        {k: tf.constant(v, choose.input_signature[3][k].dtype) for k, v in enc.items()},
    )
    return [
        (answer.decode("utf-8"), float(score))
        for answer, score in zip(got["answer"].numpy(), got["score"].numpy(), strict=True)
    ]
