"""Extractive question answering, SQuAD v1.1 and v2.0: the answer is a span of the context.

Data: the official SQuAD JSON (`data.format: squad`): `{"data": [{"title", "paragraphs":
[{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}],
"is_impossible"}]}]}]}`. Training learns each question's first answer; validation scores the
prediction against all of them. With `questionAnswering.allowNoAnswer` (SQuAD v2.0) a question
may have no answer (`is_impossible: true`, or no answers), and the model learns to answer "".

A malformed question is a data error (exit code 3) named by file and line: the line is where
the question's `"id": "..."` stands in the file (its n-th occurrence for the n-th question of
that id; else where its `"question"` text stands; else the line of the question before it).
The official SQuAD files are one line each, so the message names the question id as well.

Encoding follows Google's `run_squad.py`: the context is split into words (`text.split_words`,
the BERT basic tokenizer's split, with byte offsets) and word pieces; the question keeps at most
`maxQueryLength` pieces; a context longer than one window of `sequenceLength - question - 3`
pieces is cut into windows starting every `docStride` pieces. Each window is one example:
`[CLS] question [SEP] window [SEP]` (segment 0, then 1 from the window on). Its labels are the
positions of the answer's first and last piece, or 0 (`[CLS]`) when the answer is not inside
the window or there is none. The answer's pieces are its words' pieces, narrowed to the pieces
of the answer text itself when it starts or ends inside a word (`_improve_answer_span`). The
same graph ops (`windows`) encode the training data and the served requests.

Model: the backbone's sequence output and a two-unit Dense named `qa_head` (Google's
`cls/squad/output_weights`, Hugging Face's `qa_outputs`) → `start_logits` and `end_logits`
`[batch, sequenceLength]`. Loss: the mean of the start and end cross entropies over all
positions; a window counts as correct when both argmaxes are right.

Prediction (validation and the export): over all windows of a question, the span with the
highest start + end logit whose end is not before its start, at most `maxAnswerLength` pieces
long, inside the context, and whose start piece has its most context in that window (Google's
"max context": `min(left, right) + 0.01 * window length` is largest, the first window on ties).
Its text is the context between the start of its first word and the end of its last word (the
original text, not word pieces). With allowNoAnswer the no-answer score is the smallest
`start_logits[0] + end_logits[0]` over the windows; if it beats the best span, the answer is
"". Metrics: the official SQuAD v2.0 script's exact match and F1 (as fractions, not percent),
with `has_answer_*`/`no_answer_*` splits when allowNoAnswer.

Export: `question`, `context` (strings `[batch]`) → `answer` (string, "" for no answer),
`start`/`end` (character offsets of the answer in `context`, -1 for no answer) and `score`
(its start + end logit; for "" the no-answer score).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import json
import re
import string
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import DataFormat
from berth_trainer.modeling import text_inputs
from berth_trainer.tasks import Encoded, FineTuning, bad_row, predict
from berth_trainer.tasks.text import split_words, to_char_offsets, word_pieces

#: The model's named inputs.
FEATURES = ("token_ids", "segment_ids", "padding_mask")


@dataclasses.dataclass
class Question:
    """One question of a SQuAD file."""

    id: str
    question: str
    context: str
    #: Gold answer texts (all of them; empty for no answer).
    answers: list[str]
    #: Character offset of the first answer in the context (-1: no answer).
    answer_start: int
    #: `file:line` of the question (found when needed: only for an error).
    where: Callable[[], str]


@dataclasses.dataclass
class Windows:
    """What `evaluate` needs to turn window logits into answers (`Encoded.references`)."""

    #: Per window `[windows]`: its question, its first context piece, the position of that
    #: piece in the window (question pieces + 2) and its context pieces.
    example: np.ndarray
    start: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    #: `[windows, sequenceLength]`: a context piece with its most context in this window.
    max_context: np.ndarray
    #: Per question: UTF-8 byte offsets of the words of its context pieces, the context, the
    #: gold answers and the ids.
    piece_starts: list[np.ndarray]
    piece_ends: list[np.ndarray]
    contexts: list[str]
    answers: list[list[str]]
    ids: list[str]


class QuestionAnswering(FineTuning):
    formats = (DataFormat.SQUAD,)
    head = "qa_head"

    def __init__(self, cfg, encoder) -> None:
        super().__init__(cfg, encoder)
        qa = cfg.question_answering
        self.n = cfg.training.sequence_length
        self.max_query_length = qa.max_query_length
        self.doc_stride = qa.doc_stride
        self.max_answer_length = qa.max_answer_length
        self.allow_no_answer = qa.allow_no_answer
        self.unk_id = encoder.vocabulary.index("[UNK]")
        self._encode_fn: Any = None
        self._pieces_fn: Any = None

    # --- reading -------------------------------------------------------------------------------

    def windows(self, question: tf.Tensor, context: tf.Tensor) -> dict[str, tf.Tensor]:
        """`windows` with this task's tokenizer and settings."""
        s = self.encoder.specials
        return windows(
            self.encoder.tokenizer,
            question,
            context,
            sequence_length=self.n,
            max_query_length=self.max_query_length,
            doc_stride=self.doc_stride,
            ids=(s.cls, s.sep, s.pad, self.unk_id),
        )

    def _compiled(self):
        if self._encode_fn is None:
            spec = tf.TensorSpec([None], tf.string)
            self._encode_fn = tf.function(self.windows, input_signature=[spec, spec])
            tokenizer, unk = self.encoder.tokenizer, self.unk_id
            self._pieces_fn = tf.function(
                lambda t: word_pieces(tokenizer, split_words(t)[0], unk).merge_dims(1, 2),
                input_signature=[spec],
            )
        return self._encode_fn, self._pieces_fn

    def read(self, files, field, labels):
        questions: list[Question] = []
        for path in files:
            with tf.io.gfile.GFile(path, "r") as f:
                content = f.read()
            questions += parse_squad(content, path, field, self.allow_no_answer)
        return self.encode(questions, field), None

    def encode(self, questions: list[Question], field: str, batch: int = 256) -> Encoded:
        """Windows, labels and references of `questions`."""
        encode, pieces_of = self._compiled()
        n = self.n
        parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        piece_ids: list[np.ndarray] = []
        piece_starts: list[np.ndarray] = []
        piece_ends: list[np.ndarray] = []
        for first in range(0, len(questions), batch):
            chunk = questions[first : first + batch]
            out = encode(
                tf.constant([q.question for q in chunk]), tf.constant([q.context for q in chunk])
            )
            for k in (*FEATURES, "window_start", "offset", "length", "max_context"):
                parts[k].append(out[k].numpy())
            parts["example"].append(out["example"].numpy() + first)
            for name, into in (
                ("pieces", piece_ids),
                ("piece_starts", piece_starts),
                ("piece_ends", piece_ends),
            ):
                r = out[name]
                values, splits = r.flat_values.numpy(), r.row_splits.numpy()
                into += [values[a:b] for a, b in itertools.pairwise(splits)]
        if not questions:
            empty = {k: np.zeros([0, n], np.int32) for k in FEATURES}
            return Encoded(
                empty,
                {
                    "start_position": np.zeros([0], np.int32),
                    "end_position": np.zeros([0], np.int32),
                },
                None,
            )
        arrays = {k: np.concatenate(v) for k, v in parts.items()}

        answered = [i for i, q in enumerate(questions) if q.answer_start >= 0]
        texts = [questions[i].answers[0] for i in answered]
        answer_pieces: list[list[int]] = []
        for first in range(0, len(texts), 1024):
            answer_pieces += pieces_of(tf.constant(texts[first : first + 1024])).to_list()
        spans = {}
        for i, tokens in zip(answered, answer_pieces, strict=True):
            q = questions[i]
            begin = len(q.context[: q.answer_start].encode("utf-8"))
            end = begin + len(q.answers[0].encode("utf-8"))
            span = answer_span(piece_starts[i], piece_ends[i], begin, end)
            if span is None:
                raise bad_row(
                    field,
                    q.where(),
                    f"question {q.id!r}: answer {q.answers[0]!r} covers no word of its context",
                )
            spans[i] = improve_answer_span(piece_ids[i].tolist(), span, tokens)
        start_positions, end_positions = window_labels(
            arrays["example"], arrays["window_start"], arrays["offset"], arrays["length"], spans
        )
        features = {k: arrays[k].astype(np.int32) for k in FEATURES}
        references = Windows(
            example=arrays["example"].astype(np.int32),
            start=arrays["window_start"].astype(np.int32),
            offset=arrays["offset"].astype(np.int32),
            length=arrays["length"].astype(np.int32),
            max_context=arrays["max_context"].astype(bool),
            piece_starts=piece_starts,
            piece_ends=piece_ends,
            contexts=[q.context for q in questions],
            answers=[q.answers for q in questions],
            ids=[q.id for q in questions],
        )
        labels = {"start_position": start_positions, "end_position": end_positions}
        return Encoded(features, labels, references)

    # --- model and loss ------------------------------------------------------------------------

    def build(self, backbone, labels):
        n = self.n
        inputs = text_inputs(n)
        sequence = backbone(inputs)["sequence_output"]
        logits = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name=self.head,
        )(sequence)  # [batch, n, 2]
        by_kind = keras.layers.Permute((2, 1), name="qa_transpose")(logits)  # [batch, 2, n]
        outputs = {}
        for name, crop in (("start_logits", (0, 1)), ("end_logits", (1, 0))):
            one = keras.layers.Cropping1D(crop, name=f"{name}_crop")(by_kind)
            outputs[name] = keras.layers.Reshape((n,), dtype="float32", name=name)(one)
        return keras.Model(inputs, outputs, name="bert_question_answering")

    def loss(self, outputs, labels):
        start = tf.cast(outputs["start_logits"], tf.float32)
        end = tf.cast(outputs["end_logits"], tf.float32)
        gold_start, gold_end = labels["start_position"], labels["end_position"]
        ce = keras.losses.sparse_categorical_crossentropy
        per_example = (
            ce(gold_start, start, from_logits=True) + ce(gold_end, end, from_logits=True)
        ) / 2
        right = tf.equal(tf.argmax(start, -1, output_type=tf.int32), gold_start) & tf.equal(
            tf.argmax(end, -1, output_type=tf.int32), gold_end
        )
        return per_example, {
            "correct": tf.reduce_sum(tf.cast(right, tf.float32)),
            "count": tf.cast(tf.size(gold_start), tf.float32),
        }

    # --- validation ----------------------------------------------------------------------------

    def predictions(self, model, encoded: Encoded, batch_size: int) -> list[tuple[str, float]]:
        """(answer, score) of every question of `encoded`."""
        if not len(encoded):
            return []
        out = predict(model, encoded.features, batch_size)
        return decode(
            out["start_logits"],
            out["end_logits"],
            encoded.references,
            self.max_answer_length,
            self.allow_no_answer,
        )

    def evaluate(self, model, encoded, batch_size):
        answers = [a for a, _ in self.predictions(model, encoded, batch_size)]
        refs = encoded.references
        return squad_scores(answers, refs.answers if refs is not None else [], self.allow_no_answer)

    # --- export --------------------------------------------------------------------------------

    def serve(self, model, archive, labels):
        def answer(question, context):
            enc = self.windows(question, context)
            out = model({k: enc[k] for k in FEATURES}, training=False)
            return choose_answers(
                context,
                tf.cast(out["start_logits"], tf.float32),
                tf.cast(out["end_logits"], tf.float32),
                enc,
                self.max_answer_length,
                self.allow_no_answer,
            )

        archive.add_endpoint(
            "serving_default",
            answer,
            input_signature=[
                tf.TensorSpec([None], tf.string, name="question"),
                tf.TensorSpec([None], tf.string, name="context"),
            ],
        )


# --- SQuAD JSON -------------------------------------------------------------------------------


class _Lines:
    """Line numbers of questions in a JSON text, found lazily (only for an error)."""

    def __init__(self, content: str, path: str) -> None:
        self.content, self.path = content, path
        self._starts: list[int] | None = None

    def line_of(self, key: str, value: Any, nth: int = 0) -> int | None:
        """Line of the `nth` occurrence of `"key": value` (as JSON, either escaping)."""
        try:
            forms = {json.dumps(value), json.dumps(value, ensure_ascii=False)}
        except (TypeError, ValueError):
            return None
        pattern = re.compile(rf'"{re.escape(key)}"\s*:\s*(?:{"|".join(map(re.escape, forms))})')
        for i, match in enumerate(pattern.finditer(self.content)):
            if i == nth:
                if self._starts is None:
                    self._starts = [0] + [m.end() for m in re.finditer("\n", self.content)]
                return bisect.bisect_right(self._starts, match.start())
        return None

    def at(self, line: int) -> str:
        return f"{self.path}:{line}"


def parse_squad(content: str, path: str, field: str, allow_no_answer: bool) -> list[Question]:
    """The questions of one SQuAD JSON file; a malformed one is a `bad_row` naming file and
    line (see the module docstring)."""
    try:
        doc = json.loads(content)
    except json.JSONDecodeError as err:
        raise bad_row(field, f"{path}:{err.lineno}", f"invalid JSON: {err.msg}") from err
    lines = _Lines(content, path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise bad_row(field, lines.at(1), 'not SQuAD JSON: no list "data" at the top level')
    out: list[Question] = []
    # How many questions before had the same "id" (and "question"): the n-th question with
    # an id is at its n-th occurrence in the text.
    seen: collections.Counter = collections.Counter()
    last: list[tuple[Any, dict[str, int]]] = []  # the question before, for a fallback

    def count(qa: Any) -> dict[str, int]:
        nth = {}
        for key in ("id", "question"):
            if isinstance(qa, dict) and isinstance(qa.get(key), str | int):
                nth[key] = seen[key, json.dumps(qa[key])]
                seen[key, json.dumps(qa[key])] += 1
        return nth

    def find(qa: Any, nth: dict[str, int]) -> int | None:
        for key, n in nth.items():
            line = lines.line_of(key, qa[key], n)
            if line is not None:
                return line
        return None

    def where(qa: Any, nth: dict[str, int]) -> str:
        line = find(qa, nth)
        if line is None and last:
            line = find(*last[-1])
        return lines.at(line or 1)

    for article in doc["data"]:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            title = article.get("title") if isinstance(article, dict) else None
            line = lines.line_of("title", title) if title is not None else None
            at = lines.at(line) if line else where(None, {})
            raise bad_row(field, at, 'an article without a list "paragraphs"')
        for paragraph in paragraphs:
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise bad_row(field, where(None, {}), 'a paragraph without a list "qas"')
            if not isinstance(context, str):
                first = qas[0] if qas else None
                at = where(first, count(first))
                raise bad_row(field, at, 'a paragraph without a string "context"')
            for qa in qas:
                nth = count(qa)
                out.append(
                    _question(qa, context, field, allow_no_answer, lambda q=qa, k=nth: where(q, k))
                )
                last[:] = [(qa, nth)]
    return out


def _question(qa: Any, context: str, field: str, allow_no_answer: bool, where) -> Question:
    if not isinstance(qa, dict):
        raise bad_row(field, where(), "a question that is not a JSON object")
    impossible = qa.get("is_impossible") is True
    answers = qa.get("answers", [] if impossible else None)
    missing = [k for k in ("id", "question") if not isinstance(qa.get(k), str | int)]
    missing += ["answers"] if answers is None else []
    if missing:
        raise bad_row(field, where(), f"question {qa.get('id')!r}: missing key(s) {missing}")
    qid, text = str(qa["id"]), str(qa["question"])
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise bad_row(field, where(), f'question {qid!r}: "answers" is not a list of objects')
    if impossible or not answers:
        if not allow_no_answer:
            why = "is_impossible: true (SQuAD v2.0)" if impossible else "an empty answers list"
            raise bad_row(
                field,
                where(),
                f"question {qid!r} has no answer ({why}); set questionAnswering.allowNoAnswer: "
                "true to train on questions without an answer",
            )
        return Question(qid, text, context, [], -1, where)
    absent = [k for k in ("text", "answer_start") if k not in answers[0]]
    absent += ["text"] if any("text" not in a for a in answers[1:]) and "text" not in absent else []
    if absent:
        raise bad_row(field, where(), f"question {qid!r}: an answer without key(s) {absent}")
    gold = [str(a["text"]) for a in answers]
    first, start = gold[0], answers[0]["answer_start"]
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise bad_row(field, where(), f"question {qid!r}: answer_start {start!r} is not an offset")
    if not first.strip():
        raise bad_row(field, where(), f"question {qid!r}: answer {first!r} is empty")
    if context[start : start + len(first)] != first:
        raise bad_row(
            field,
            where(),
            f"question {qid!r}: answer {first!r} is not at answer_start {start} of its context "
            f"(which has {context[start : start + len(first)]!r} there)",
        )
    return Question(qid, text, context, gold, start, where)


# --- windows (graph ops: reading data and serving) --------------------------------------------


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


# --- choosing the answer ----------------------------------------------------------------------


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    start_ok: np.ndarray,
    end_ok: np.ndarray,
    max_answer_length: int,
) -> tuple[float, int, int, int] | None:
    """The best span over windows `[windows, n]`: (score, window, start, end) maximising
    start + end logit with start_ok[start], end_ok[end], start <= end < start +
    max_answer_length; the first in (window, start, end) order on ties; None if none is valid.

    >>> best_span(np.array([[0.0, 3, 1, 0]]), np.array([[0.0, 0, 1, 2]]),
    ...           np.array([[0, 1, 1, 1]], bool), np.array([[0, 1, 1, 1]], bool), 2)
    (4.0, 0, 1, 2)
    """
    n = start_logits.shape[1]
    band = min(max_answer_length, n)
    ends = np.arange(n)[:, None] + np.arange(band)[None, :]  # [n, band]
    inside = ends < n
    ends = np.minimum(ends, n - 1)
    s = start_logits.astype(np.float32)[:, :, None]
    e = end_logits.astype(np.float32)[:, ends]  # [w, n, band]
    valid = start_ok[:, :, None] & end_ok[:, ends] & inside[None]
    if not valid.any():
        return None
    scores = np.where(valid, s + e, -np.inf).reshape(-1)
    best = int(np.argmax(scores))
    window, rest = divmod(best, n * band)
    first, d = divmod(rest, band)
    return float(scores[best]), window, first, first + d


def decode(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    refs: Windows,
    max_answer_length: int,
    allow_no_answer: bool,
) -> list[tuple[str, float]]:
    """Each question's (answer text, score) from its windows' logits (module docstring)."""
    n = start_logits.shape[1]
    positions = np.arange(n)[None, :]
    bounds = np.searchsorted(refs.example, np.arange(len(refs.contexts) + 1))
    out = []
    for e, (a, b) in enumerate(itertools.pairwise(bounds)):
        s, t = start_logits[a:b].astype(np.float32), end_logits[a:b].astype(np.float32)
        in_context = (positions >= refs.offset[a:b, None]) & (
            positions < (refs.offset + refs.length)[a:b, None]
        )
        found = best_span(s, t, refs.max_context[a:b], in_context, max_answer_length)
        null = float(np.min(s[:, 0] + t[:, 0]))
        if found is None or (allow_no_answer and null > found[0]):
            out.append(("", null))
            continue
        score, w, i, j = found
        w += a
        first = refs.start[w] + i - refs.offset[w]
        last = refs.start[w] + j - refs.offset[w]
        raw = refs.contexts[e].encode("utf-8")
        text = raw[refs.piece_starts[e][first] : refs.piece_ends[e][last]].decode("utf-8")
        out.append((text, score))
    return out


def choose_answers(
    context: tf.Tensor,
    start_logits: tf.Tensor,
    end_logits: tf.Tensor,
    enc: dict[str, tf.Tensor],
    max_answer_length: int,
    allow_no_answer: bool,
) -> dict[str, tf.Tensor]:
    """`decode` in graph ops over the windows of `windows(…, context)`: per question
    `answer`, `start`/`end` (character offsets, -1 for no answer) and `score`."""
    n = start_logits.shape[1]
    band = min(max_answer_length, n)
    batch = tf.shape(context)[0]
    example = enc["example"]
    total = tf.shape(example)[0]
    ends = tf.range(n)[:, None] + tf.range(band)[None, :]  # [n, band]
    inside = ends < n
    ends = tf.minimum(ends, n - 1)
    e = tf.gather(end_logits, ends, axis=1)  # [w, n, band]
    end_ok = tf.gather(enc["context"], ends, axis=1)
    valid = enc["max_context"][:, :, None] & end_ok & inside[None]
    scores = tf.reshape(tf.where(valid, start_logits[:, :, None] + e, -np.inf), [total, -1])
    has = tf.reduce_any(tf.reshape(valid, [total, -1]), -1)
    window_best = tf.reduce_max(scores, -1)
    flat = tf.range(n * band)[None, :]
    first_best = tf.reduce_min(tf.where(scores == window_best[:, None], flat, n * band), -1)

    best = tf.math.unsorted_segment_max(tf.where(has, window_best, -np.inf), example, batch)
    answered = tf.math.unsorted_segment_max(tf.cast(has, tf.int32), example, batch) > 0
    candidate = has & tf.equal(window_best, tf.gather(best, example))
    w = tf.math.unsorted_segment_min(tf.where(candidate, tf.range(total), total), example, batch)
    w = tf.minimum(w, tf.maximum(total - 1, 0))
    pick = tf.gather(first_best, w)
    i, j = pick // band, pick // band + pick % band
    byte_start = tf.gather(tf.gather(enc["byte_start"], w), i[:, None], batch_dims=1)[:, 0]
    byte_end = tf.gather(tf.gather(enc["byte_end"], w), j[:, None], batch_dims=1)[:, 0]
    null = tf.math.unsorted_segment_min(start_logits[:, 0] + end_logits[:, 0], example, batch)
    no_answer = ~answered
    if allow_no_answer:
        no_answer |= null > best
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
        "score": tf.where(no_answer, null, best),
    }


# --- SQuAD metrics (the official evaluate-v2.0.py) --------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles a/an/the, single spaces (official SQuAD).

    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    """
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the normalized answers; an empty side scores 1 only against empty."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    same = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: list[str], golds: list[list[str]], allow_no_answer: bool = False
) -> dict[str, float]:
    """Exact match and F1 (fractions), each the max over a question's gold answers (gold
    answers that normalize to "" dropped, none → [""]), averaged over questions; with
    `allow_no_answer` also over questions with (`has_answer_*`) and without (`no_answer_*`) an
    answer.

    >>> squad_scores(["Denver Broncos", "a cat"], [["Denver Broncos"], ["the cat", "dog"]])
    {'exact_match': 1.0, 'f1': 1.0}
    """
    em: list[float] = []
    f1: list[float] = []
    has: list[bool] = []
    for prediction, answers in zip(predictions, golds, strict=True):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        em.append(max(exact_match(prediction, a) for a in answers))
        f1.append(max(f1_score(prediction, a) for a in answers))
        has.append(answers != [""])
    out = {"exact_match": _mean(em), "f1": _mean(f1)}
    if allow_no_answer:
        for name, keep in (("has_answer", True), ("no_answer", False)):
            chosen = [i for i, h in enumerate(has) if h == keep]
            if chosen:
                out[f"{name}_exact_match"] = _mean([em[i] for i in chosen])
                out[f"{name}_f1"] = _mean([f1[i] for i in chosen])
    return out


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


TASK_CLASS = QuestionAnswering
