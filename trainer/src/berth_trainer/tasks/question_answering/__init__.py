"""Extractive question answering, SQuAD v1.1 and v2.0: the answer is a span of the context.

Data: the official SQuAD JSON (`data.format: squad`, read by `squad`). Training learns each
question's first answer; validation scores the prediction against all of them. With
`questionAnswering.allowNoAnswer` (SQuAD v2.0) a question may have no answer (`is_impossible:
true`, or no answers), and the model learns to answer "". A malformed question is a data error
(exit code 3) named by file and line.

Encoding (`windows`) follows Google's `run_squad.py`: a question and its context become one or
more windows `[CLS] question [SEP] window [SEP]` of `sequenceLength` pieces, a window every
`docStride` context pieces; each window is one row, labelled with the positions of the answer's
first and last piece (0, `[CLS]`, when the window does not hold it). Questions are encoded a
chunk at a time; the same graph ops encode the training data and the served requests.

Model: the backbone's sequence output and a two-unit Dense named `qa_head` (Google's
`cls/squad/output_weights`, Hugging Face's `qa_outputs`) → `start_logits` and `end_logits`
`[batch, sequenceLength]`. Loss: the mean of the start and end cross entropies over all
positions; a window counts as correct when both argmaxes are right.

Prediction (validation and the export, one implementation: `decoding.choose_answers`): over
all windows of a question, the best-scoring valid span, or "" when allowNoAnswer and the
no-answer score beats it. Metrics (`metrics`): the official SQuAD v2.0 script's exact match
and F1 (as fractions, not percent), with `has_answer_*`/`no_answer_*` splits when
allowNoAnswer.

Export: `question`, `context` (strings `[batch]`) → `answer` (string, "" for no answer),
`start`/`end` (character offsets of the answer in `context`, -1 for no answer) and `score`
(its start + end logit; for "" the no-answer score).

The head's names (`QA_HEAD`), declared only here:

    >>> QA_HEAD.layer, QA_HEAD.huggingface["qa_outputs.weight"]
    ('qa_head', 'cls/squad/output_weights')
"""

from __future__ import annotations

import itertools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import DataFormat, Task
from berth_trainer.tasks.base import Encoded, ExampleTask, Head, bad_row
from berth_trainer.tasks.question_answering.decoding import best_spans, choose_answers, decode
from berth_trainer.tasks.question_answering.metrics import (
    exact_match,
    f1_score,
    normalize_answer,
    squad_scores,
)
from berth_trainer.tasks.question_answering.squad import Question, parse_squad
from berth_trainer.tasks.question_answering.windows import (
    Windows,
    answer_span,
    improve_answer_span,
    window_labels,
    windows,
)
from berth_trainer.tasks.text import split_words, word_pieces
from berth_trainer.textfiles import read_text

__all__ = [
    "QA_HEAD",
    "TASK_CLASS",
    "Question",
    "QuestionAnswering",
    "Windows",
    "answer_span",
    "best_spans",
    "choose_answers",
    "decode",
    "exact_match",
    "f1_score",
    "improve_answer_span",
    "normalize_answer",
    "parse_squad",
    "squad_scores",
    "window_labels",
    "windows",
]

#: The start/end logits head: Google's `cls/squad`, Hugging Face's `qa_outputs`.
QA_HEAD = Head(
    "qa_head",
    {
        "cls/squad/output_weights": ("qa_head", "kernel", "T"),
        "cls/squad/output_bias": ("qa_head", "bias", ""),
    },
    {"qa_outputs.weight": "cls/squad/output_weights", "qa_outputs.bias": "cls/squad/output_bias"},
)

#: The model's named inputs.
FEATURES = ("token_ids", "segment_ids", "padding_mask")
#: What `windows` gives per window (besides `FEATURES`) that `Windows` keeps.
_PER_WINDOW = (
    "example",
    "window_start",
    "offset",
    "length",
    "context",
    "max_context",
    "byte_start",
    "byte_end",
)


class QuestionAnswering(ExampleTask):
    name = Task.QUESTION_ANSWERING
    formats = (DataFormat.SQUAD,)
    heads = (QA_HEAD,)
    pooled = False
    architecture = "BertForQuestionAnswering"

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

    # --- data ----------------------------------------------------------------------------------

    def examples(self, files, field):
        """The `Question`s of SQuAD JSON `files`, each file parsed whole (one JSON document)."""
        for path in files:
            yield from parse_squad(read_text(path, field), path, field, self.allow_no_answer)

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
        """(`windows`, the word pieces of texts) as graphs."""
        if self._encode_fn is None:
            spec = tf.TensorSpec([None], tf.string)
            self._encode_fn = tf.function(self.windows, input_signature=[spec, spec])
            tokenizer, unk = self.encoder.tokenizer, self.unk_id
            self._pieces_fn = tf.function(
                lambda t: word_pieces(tokenizer, split_words(t)[0], unk).merge_dims(1, 2),
                input_signature=[spec],
            )
        return self._encode_fn, self._pieces_fn

    def encode(self, questions: list[Question], field: str) -> Encoded:
        """The windows of a chunk of `questions` (rows), their labels and their `Windows`
        (`example` indexes `questions`)."""
        encode, pieces_of = self._compiled()
        out = encode(
            tf.constant([q.question for q in questions]),
            tf.constant([q.context for q in questions]),
        )
        arrays = {k: out[k].numpy() for k in (*FEATURES, *_PER_WINDOW)}
        piece_ids, piece_starts, piece_ends = (
            [values[a:b] for a, b in itertools.pairwise(splits)]
            for values, splits in (
                (out[k].flat_values.numpy(), out[k].row_splits.numpy())
                for k in ("pieces", "piece_starts", "piece_ends")
            )
        )

        answered = [i for i, q in enumerate(questions) if q.answer_start >= 0]
        texts = [questions[i].answers[0] for i in answered]
        answer_pieces = pieces_of(tf.constant(texts)).to_list() if texts else []
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
        references = Windows(
            example=arrays["example"].astype(np.int32),
            start=arrays["window_start"].astype(np.int32),
            offset=arrays["offset"].astype(np.int32),
            length=arrays["length"].astype(np.int32),
            context=arrays["context"].astype(bool),
            max_context=arrays["max_context"].astype(bool),
            byte_start=arrays["byte_start"].astype(np.int32),
            byte_end=arrays["byte_end"].astype(np.int32),
            piece_starts=piece_starts,
            piece_ends=piece_ends,
            contexts=[q.context for q in questions],
            answers=[q.answers for q in questions],
            ids=[q.id for q in questions],
        )
        features = {k: arrays[k].astype(np.int32) for k in FEATURES}
        labels = {"start_position": start_positions, "end_position": end_positions}
        return Encoded(features, labels, references)

    # --- model and loss ------------------------------------------------------------------------

    def build(self, backbone):
        from berth_trainer.modeling import text_inputs

        n = self.n
        inputs = text_inputs(n)
        sequence = backbone(inputs)["sequence_output"]
        logits = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name=self.head.layer,
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

    def score(self, model, encoded, outputs):
        """(answer, gold answers) of each question of the chunk: its windows' logits decoded
        by `decode` (the export's graph)."""
        refs = encoded.references
        answers = decode(
            outputs["start_logits"],
            outputs["end_logits"],
            refs,
            self.max_answer_length,
            self.allow_no_answer,
        )
        return [(a, gold) for (a, _), gold in zip(answers, refs.answers, strict=True)]

    def metrics(self, scores):
        pairs = [pair for chunk in scores for pair in chunk]
        return squad_scores([a for a, _ in pairs], [g for _, g in pairs], self.allow_no_answer)

    # --- export --------------------------------------------------------------------------------

    def serve(self, model, archive):
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


TASK_CLASS = QuestionAnswering
