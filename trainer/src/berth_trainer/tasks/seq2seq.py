"""Sequence-to-sequence generation on one BERT, as UniLM (Dong et al. 2019) and bert4keras.

Data: jsonl rows `{"source": ..., "target": ...}` (keys `seq2seq.sourceField`/`targetField`).
An example is `[CLS] source [SEP] target [SEP] [PAD]...` in `training.sequenceLength` n
positions: segment 0 for `[CLS] source [SEP]`, 1 for the target and its `[SEP]`. The target
keeps at most T - 1 word pieces (T = `seq2seq.maxTargetLength`, its `[SEP]` included), the
source at most n - T - 2. The attention mask is UniLM's: the source sees the source only,
a target position the source and the target up to itself (`unilm_attention_mask`). The output
at the position before each target token predicts it through the MLM head (`mlm_head`, tied to
the token embedding), so an MLM checkpoint (Google, Hugging Face or Berth pretraining)
initialises the whole model. Loss: the mean cross-entropy over a target's pieces.

Decoding (`generate`) has static shapes: the source is packed into the fixed `[batch, n]`
buffer, then exactly T steps each run a full forward pass and write the next token at the
next position (segment 1); a sequence stops at `[SEP]` (pad after it). Greedy is beam size 1;
beam search keeps `batch * K` rows, scores by the sum of log-probabilities, extends a finished
beam only by `[PAD]` at no cost, and takes the top K of K * V candidates each step. It runs
inside `tf.function` and under XLA (`jit_compile=True`) alike.

Validation: each chunk's targets are generated from its sources alone (`source_only`, beam
`seq2seq.beamSize`); over the split, ROUGE-L F-measure (`rouge_l`, longest common subsequence
of whitespace tokens) and exact match of the generated text against the reference normalised
as the tokenizer does (lower-cased for an uncased vocabulary, accents stripped, punctuation
split off). Export: `source` → `target` (text), `target_ids` (`[batch, T]`, `[SEP]` then
`[PAD]`) and `score`.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Any, NamedTuple

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from berth_trainer.bert_pretrainer import BackboneModel, tied_mlm_head
from berth_trainer.config import DataFormat, Task
from berth_trainer.tasks.base import Encoded, ExampleTask, bad_row, positions_loss
from berth_trainer.tasks.pretraining import MLM_HEAD
from berth_trainer.textfiles import rows

log = logging.getLogger("berth_trainer")

#: A score no real sequence reaches (log-probabilities of impossible continuations); finite so
#: that sums never make NaN.
_IMPOSSIBLE = -1e9


def unilm_attention_mask(segment_ids: tf.Tensor, padding_mask: tf.Tensor) -> tf.Tensor:
    """`[batch, n, n]` int32: query i sees key j iff j is not padding and j is in the source
    (segment 0) or at most i. The source thus sees only the source; a target position sees
    the source and the target up to itself.

    >>> m = unilm_attention_mask(tf.constant([[0, 0, 1, 1, 0]]), tf.constant([[1, 1, 1, 1, 0]]))
    >>> m[0].numpy().tolist()
    [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    """
    n = segment_ids.shape[1] or tf.shape(segment_ids)[1]
    positions = tf.range(n)
    causal = positions[None, :] <= positions[:, None]  # [query, key]
    source = tf.equal(segment_ids, 0)[:, None, :]
    visible = tf.logical_and(
        tf.not_equal(padding_mask, 0)[:, None, :], tf.logical_or(source, causal[None])
    )
    return tf.cast(visible, tf.int32)


@keras.saving.register_keras_serializable(package="berth")
class BertSeq2Seq(BackboneModel):
    """UniLM: the backbone's own layers under `unilm_attention_mask`, and the MLM head (tied
    to the token embedding) at `mask_positions`.

    Inputs `token_ids`, `segment_ids`, `padding_mask` (`[batch, n]`) and `mask_positions`
    (`[batch, T]`: the positions whose outputs predict the target's pieces); output
    `{"logits": [batch, T, vocabulary] float32}`. The backbone lives in the config (as in
    `BertPretrainer`), so `from_config` and `keras.models.clone_model` rebuild the tie.
    """

    config_fields = ("sequence_length",)

    def __init__(self, backbone: keras_hub.models.BertBackbone, sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.backbone = backbone
        self.mlm_head = tied_mlm_head(backbone, sequence_length)
        # === Config ===
        self.sequence_length = sequence_length
        self.built = True

    def sequence_output(
        self, inputs: dict, attention_mask: tf.Tensor | None = None, training: bool | None = None
    ) -> tf.Tensor:
        """The backbone's `sequence_output` under `attention_mask` (default: UniLM's)."""
        b = self.backbone
        if attention_mask is None:
            attention_mask = unilm_attention_mask(inputs["segment_ids"], inputs["padding_mask"])
        tokens = b.token_embedding(inputs["token_ids"])
        positions = b.position_embedding(tokens)
        segments = b.segment_embedding(inputs["segment_ids"])
        x = b.embeddings_add((tokens, positions, segments))
        x = b.embeddings_layer_norm(x)
        x = b.embeddings_dropout(x, training=training)
        for layer in b.transformer_layers:
            x = layer(x, attention_mask=attention_mask, training=training)
        return x

    def call(self, inputs: dict, training: bool | None = None) -> dict:
        x = self.sequence_output(inputs, training=training)
        logits = self.mlm_head(x, mask_positions=inputs["mask_positions"])
        return {"logits": keras.ops.cast(logits, "float32")}


def generate(
    model, features: dict, max_target_length: int, beam_size: int, sep_id: int, pad_id: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Generate targets for packed sources: `features` are `token_ids`, `segment_ids`,
    `padding_mask` (`[batch, n]`: `[CLS] source [SEP]`, then padding) and `target_start`
    (`[batch]`: the first position after the source's `[SEP]`). Returns the tokens `[batch, T]`
    (ending with `[SEP]` unless cut at T, then `[PAD]`) and their summed log-probabilities
    `[batch]`, of the best beam.

    Pure TensorFlow at static shapes: a `tf.while_loop` of exactly T steps, each a full forward
    pass of `model` (`{"logits": [rows, 1, V]}` at one `mask_positions` per row) over the
    `[batch * K, n]` buffer, writing the chosen token (segment 1, not padding) at
    `target_start + step`. `beam_size` 1 is greedy decoding.
    """
    k, steps = beam_size, max_target_length
    token_ids = tf.convert_to_tensor(features["token_ids"], tf.int32)
    n = token_ids.shape[1]
    batch = tf.shape(token_ids)[0]

    def beams(x):  # [batch, ...] → [batch * K, ...], each example's K beams together
        return tf.repeat(tf.cast(x, tf.int32), k, axis=0)

    tokens = beams(token_ids)
    segments = beams(features["segment_ids"])
    padding = beams(features["padding_mask"])
    start = beams(features["target_start"])
    columns = tf.range(n)[None, :]
    # Only the first beam is live at first, so the first step's K candidates differ.
    scores = tf.tile(tf.constant([[0.0] + [_IMPOSSIBLE] * (k - 1)]), [batch, 1])
    finished = tf.zeros([batch, k], tf.bool)
    out = tf.fill([batch, k, steps], tf.constant(pad_id, tf.int32))

    def gather_beams(x, parents):  # x [batch * K, n] by parent beam [batch, K]
        picked = tf.gather(tf.reshape(x, [-1, k, n]), parents, batch_dims=1)
        return tf.reshape(picked, [-1, n])

    def step(t, tokens, segments, padding, scores, finished, out):
        inputs = {
            "token_ids": tokens,
            "segment_ids": segments,
            "padding_mask": padding,
            "mask_positions": (start + t - 1)[:, None],
        }
        logits = tf.cast(model(inputs, training=False)["logits"][:, 0, :], tf.float32)
        vocabulary = logits.shape[-1]
        log_probs = tf.reshape(tf.nn.log_softmax(logits), [-1, k, vocabulary])
        # A finished beam continues with [PAD] only, at no cost.
        pad_only = tf.where(tf.range(vocabulary) == pad_id, 0.0, _IMPOSSIBLE)
        log_probs = tf.where(finished[:, :, None], pad_only[None, None, :], log_probs)
        candidates = tf.reshape(scores[:, :, None] + log_probs, [-1, k * vocabulary])
        scores, best = tf.math.top_k(candidates, k=k)
        parents, chosen = best // vocabulary, best % vocabulary
        tokens, segments, padding = (gather_beams(x, parents) for x in (tokens, segments, padding))
        was_finished = tf.gather(finished, parents, batch_dims=1)
        out = tf.gather(out, parents, batch_dims=1)
        out = tf.where(tf.range(steps)[None, None, :] == t, chosen[:, :, None], out)
        write = tf.logical_and(
            tf.equal(columns, (start + t)[:, None]),
            tf.logical_not(tf.reshape(was_finished, [-1]))[:, None],
        )
        tokens = tf.where(write, tf.reshape(chosen, [-1])[:, None], tokens)
        segments = tf.where(write, 1, segments)
        padding = tf.where(write, 1, padding)
        finished = tf.logical_or(was_finished, tf.equal(chosen, sep_id))
        return t + 1, tokens, segments, padding, scores, finished, out

    loop = tf.while_loop(
        lambda t, *_: t < steps,
        step,
        (tf.constant(0), tokens, segments, padding, scores, finished, out),
        maximum_iterations=steps,
    )
    scores, out = loop[4], loop[6]
    return out[:, 0, :], scores[:, 0]  # top_k sorts: beam 0 is the best


def detokenize(ids: tf.Tensor, vocabulary: tf.Tensor, sep_id: int, pad_id: int) -> tf.Tensor:
    """Generated ids `[batch, T]` → text `[batch]`: the pieces before the first `[SEP]`
    (`[PAD]` dropped), "##" pieces joined to the previous one, spaces otherwise.

    >>> vocab = tf.constant(["[PAD]", "[SEP]", "un", "##able", "to", ","])
    >>> detokenize(tf.constant([[2, 3, 4, 5, 1, 4], [1, 2, 0, 0, 0, 0]]), vocab, 1, 0).numpy()
    array([b'unable to ,', b''], dtype=object)
    """
    ids = tf.cast(ids, tf.int32)
    before_sep = tf.equal(tf.math.cumsum(tf.cast(tf.equal(ids, sep_id), tf.int32), axis=1), 0)
    keep = tf.logical_and(before_sep, tf.not_equal(ids, pad_id))
    pieces = tf.ragged.boolean_mask(tf.gather(vocabulary, ids), keep)
    text = tf.strings.reduce_join(pieces, axis=1, separator=" ")
    return tf.strings.regex_replace(text, " ##", "")


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    >>> lcs_length("a b c d".split(), "a c b d".split())
    3
    """
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta 1) of whitespace tokens: 2PR / (P + R) with P = LCS / predicted
    tokens and R = LCS / reference tokens; two empty texts agree (1.0), one empty one scores 0.

    >>> round(rouge_l("the cat sat", "the cat sat down"), 4)
    0.8571
    """
    p, r = prediction.split(), reference.split()
    if not p or not r:
        return float(not p and not r)
    common = lcs_length(p, r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F-measure and exact match (of whitespace-normalised texts) in [0, 1].

    >>> text_metrics(["a b", "c"], ["a b", "d"])
    {'rouge_l': 0.5, 'exact_match': 0.5}
    """
    pairs = list(zip(predictions, references, strict=True))
    if not pairs:
        return {"rouge_l": 0.0, "exact_match": 0.0}
    return {
        "rouge_l": round(sum(rouge_l(p, r) for p, r in pairs) / len(pairs), 6),
        "exact_match": round(sum(p.split() == r.split() for p, r in pairs) / len(pairs), 6),
    }


def source_only(features: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Training features → what `generate` starts from: the source part only (`[CLS] source
    [SEP]`, segment 0), padding after it, and `target_start`.

    >>> f = source_only({"token_ids": np.array([[2, 7, 3, 8, 3, 0]]),
    ...     "segment_ids": np.array([[0, 0, 0, 1, 1, 0]]),
    ...     "padding_mask": np.array([[1, 1, 1, 1, 1, 0]])}, pad_id=0)
    >>> f["token_ids"].tolist(), f["padding_mask"].tolist(), f["target_start"].tolist()
    ([[2, 7, 3, 0, 0, 0]], [[1, 1, 1, 0, 0, 0]], [3])
    """
    source = (features["padding_mask"] != 0) & (features["segment_ids"] == 0)
    return {
        "token_ids": np.where(source, features["token_ids"], pad_id).astype(np.int32),
        "segment_ids": np.zeros_like(features["segment_ids"], np.int32),
        "padding_mask": source.astype(np.int32),
        "target_start": source.sum(1).astype(np.int32),
    }


class Pair(NamedTuple):
    """One example: its source and target text and where it is (`FILE:LINE`)."""

    source: str
    target: str
    where: str


def _no_words(text: str) -> bool:
    """Whether `text` has only what the tokenizer drops (ASCII whitespace, control and format
    characters): caught when read, before training; other texts without word pieces (only
    accents, which an uncased vocabulary strips) when encoded.

    >>> _no_words(" \\t\\u200b"), _no_words("\\u00a0"), _no_words("a")
    (True, False, False)
    """
    return all(c in " \t\n\f\r" or unicodedata.category(c) in ("Cc", "Cf") for c in text)


class Seq2Seq(ExampleTask):
    name = Task.SEQ2SEQ
    formats = (DataFormat.JSONL,)
    heads = (MLM_HEAD,)
    pooled = False
    architecture = "BertForMaskedLM"

    def __init__(self, cfg, encoder) -> None:
        super().__init__(cfg, encoder)
        self.n = cfg.training.sequence_length
        self.t = cfg.seq2seq.max_target_length
        self.max_source = self.n - self.t - 2
        s = encoder.specials
        self.cls_id, self.sep_id, self.pad_id = s.cls, s.sep, s.pad
        self._pieces: Any = None  # the tokenizer's tf.function, made on first use
        self._words: Any = None  # `normalize`'s tf.function, made on first use
        self._compiled: tuple[Any, Any] | None = None  # (model, its generator as a tf.function)
        self._batch_size = cfg.training.global_batch_size  # generation's, set by `evaluate`

    # --- data ---

    def examples(self, files, field):
        c = self.cfg.seq2seq
        for where, row in rows(
            files, self.cfg.data.format, [c.source_field, c.target_field], field
        ):
            pair = Pair(str(row[c.source_field]), str(row[c.target_field]), where)
            for key, text in ((c.source_field, pair.source), (c.target_field, pair.target)):
                if _no_words(text):
                    raise bad_row(field, where, f"{key} {text!r} is empty (no word pieces)")
            yield pair

    def pieces(self, texts: list[str]) -> list[list[int]]:
        """Word pieces of Python strings (the tokenizer in one graph)."""
        if self._pieces is None:
            tokenizer = self.encoder.tokenizer

            def tokenize(x):
                out = tokenizer(x)
                return out if isinstance(out, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(out)

            self._pieces = tf.function(tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
        return self._pieces(tf.constant(texts, tf.string)).to_list()

    def encode(self, examples, field):
        c = self.cfg.seq2seq
        source_pieces = self.pieces([e.source for e in examples])
        target_pieces = self.pieces([e.target for e in examples])
        n, t, count = self.n, self.t, len(examples)
        token_ids = np.full([count, n], self.pad_id, np.int32)
        segment_ids = np.zeros([count, n], np.int32)
        padding = np.zeros([count, n], np.int32)
        target_ids = np.full([count, t], self.pad_id, np.int32)
        target_weights = np.zeros([count, t], np.float32)
        mask_positions = np.zeros([count, t], np.int32)
        cut_sources = cut_targets = 0
        for i, (e, src, tgt) in enumerate(zip(examples, source_pieces, target_pieces, strict=True)):
            if not src or not tgt:
                key, text = (c.source_field, e.source) if not src else (c.target_field, e.target)
                raise bad_row(field, e.where, f"{key} {text!r} is empty (no word pieces)")
            cut_sources += len(src) > self.max_source
            cut_targets += len(tgt) > t - 1
            src, tgt = src[: self.max_source], [*tgt[: t - 1], self.sep_id]
            ids = [self.cls_id, *src, self.sep_id, *tgt]
            start = len(src) + 2
            token_ids[i, : len(ids)] = ids
            segment_ids[i, start : len(ids)] = 1
            padding[i, : len(ids)] = 1
            target_ids[i, : len(tgt)] = tgt
            target_weights[i, : len(tgt)] = 1.0
            mask_positions[i] = start - 1 + np.arange(t)
        features = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding,
            "mask_positions": mask_positions,
        }
        labels = {"target_ids": target_ids, "target_weights": target_weights}
        cut = {"sources": cut_sources, "targets": cut_targets}
        return Encoded(features, labels, [e.target for e in examples], cut)

    def cut_message(self, cut, examples):
        return (
            f"cut {cut['sources']} source(s) to {self.max_source} and {cut['targets']} target(s) "
            f"to {self.t - 1} word pieces of {examples} example(s) (training.sequenceLength "
            f"{self.n}, seq2seq.maxTargetLength {self.t})"
        )

    # --- model ---

    def build(self, backbone):
        return BertSeq2Seq(backbone, sequence_length=self.n, name="bert_seq2seq")

    def loss(self, outputs, labels):
        return positions_loss(outputs["logits"], labels["target_ids"], labels["target_weights"])

    # --- generation ---

    def generator(self, model, beam_size: int | None = None):
        """`features → (ids [batch, T], scores [batch])` of `model` (`generate` with this
        task's lengths and special tokens)."""
        k = beam_size or self.cfg.seq2seq.beam_size
        return lambda features: generate(model, features, self.t, k, self.sep_id, self.pad_id)

    def encode_sources(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """Raw strings `[batch]` → `generate`'s features (inside a `tf.function`: serving)."""
        pieces = self.encoder.tokenizer(texts)
        if not isinstance(pieces, tf.RaggedTensor):
            pieces = tf.RaggedTensor.from_tensor(pieces)
        pieces = tf.cast(pieces, tf.int32)[:, : self.max_source]
        count = tf.shape(texts)[0]
        cls = tf.fill([count, 1], self.cls_id)
        sep = tf.fill([count, 1], self.sep_id)
        ids = tf.concat([cls, pieces, sep], axis=1)
        shape = [None, self.n]
        return {
            "token_ids": ids.to_tensor(self.pad_id, shape=shape),
            "segment_ids": tf.zeros([count, self.n], tf.int32),
            "padding_mask": tf.ones_like(ids).to_tensor(0, shape=shape),
            "target_start": tf.cast(ids.row_lengths(), tf.int32),
        }

    def normalize(self, texts: list[str]) -> list[str]:
        """Reference texts as the tokenizer sees them: words split off punctuation (and CJK
        characters), lower-cased and accents stripped when the tokenizer does, one space
        between words."""
        if not texts:
            return []
        if self._words is None:
            from keras_hub.src.tokenizers.word_piece_tokenizer import (
                get_special_tokens_pattern,
                pretokenize,
            )

            tok = self.encoder.tokenizer
            pattern = get_special_tokens_pattern(tok._special_tokens_for_splitting())

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def words(x):
                split = pretokenize(
                    x, tok.lowercase, tok.strip_accents, True, tok.split_on_cjk, pattern
                )
                return tf.strings.reduce_join(split, axis=1, separator=" ")

            self._words = words
        return [w.decode("utf-8") for w in self._words(tf.constant(texts)).numpy().tolist()]

    # --- validation ---

    def evaluate(self, model, batch_size):
        self._batch_size = batch_size  # generation's too, as before
        return super().evaluate(model, batch_size)

    def score(self, model, encoded, outputs):
        """The chunk's generated texts (from its sources alone, `source_only`) and its
        references, normalised. Generation is one `tf.function` per model (XLA with
        training.jitCompile): every chunk and evaluation reuses its trace."""
        if self._compiled is None or self._compiled[0] is not model:
            jit = bool(self.cfg.training.jit_compile)
            self._compiled = (model, tf.function(self.generator(model), jit_compile=jit))
        features = source_only(encoded.features, self.pad_id)
        ids = generate_all(self._compiled[1], features, self._batch_size)
        vocabulary = tf.constant(self.encoder.vocabulary)
        texts = detokenize(ids, vocabulary, self.sep_id, self.pad_id).numpy().tolist()
        predictions = [t.decode("utf-8") for t in texts]
        return predictions, self.normalize(list(encoded.references))

    def metrics(self, scores):
        predictions = [p for chunk, _ in scores for p in chunk]
        references = [r for _, chunk in scores for r in chunk]
        return text_metrics(predictions, references)

    # --- export ---

    def serve(self, model, archive):
        vocabulary = tf.constant(self.encoder.vocabulary)
        run = self.generator(model)

        def respond(source):
            ids, score = run(self.encode_sources(source))
            return {
                "target": detokenize(ids, vocabulary, self.sep_id, self.pad_id),
                "target_ids": ids,
                "score": score,
            }

        source = tf.TensorSpec([None], tf.string, name="source")
        archive.add_endpoint("serving_default", respond, input_signature=[source])


def generate_all(fn, features: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """`fn` (a `generate` in a `tf.function`) over all examples in batches of `batch_size` (the
    last one padded with copies of its last row, so one trace serves all), in order."""
    total = len(features["token_ids"])
    outputs = []
    for start in range(0, total, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in features.items()}
        size = len(batch["token_ids"])
        if size < batch_size:
            fill = np.full(batch_size - size, size - 1)
            batch = {k: np.concatenate([v, v[fill]]) for k, v in batch.items()}
        outputs.append(fn(batch)[0].numpy()[:size])
    return np.concatenate(outputs) if outputs else np.zeros([0, 0], np.int32)


TASK_CLASS = Seq2Seq
