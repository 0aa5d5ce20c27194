"""Masked-LM pre-training, with next-sentence or sentence-order prediction.

Data: `text` (one sentence per line, a blank line between documents: `corpus.documents`),
each input pipeline streaming its byte-range slice of the corpus, read, tokenized and packed
into full examples again each epoch (documents shuffled within a bounded buffer, new sentence
pairs, from `training.seed`); `tfrecord` written by `berth-trainer prepare` (or by `data.prepare`
before the training), already packed; or `googleTfrecord`, the masked records of Google BERT's
`create_pretraining_data.py` (static masks, used as written). Otherwise masking is dynamic, per
example: 80% [MASK], 10% random, 10% unchanged, whole words with
`pretraining.wholeWordMasking`.

Model: `BertPretrainer` (the MLM head tied to the token embedding, Google's `cls/predictions`;
with a sentence objective a 2-way head on the pooled output, `cls/seq_relationship`). Loss: the
mean cross-entropy over an example's masked positions (plus the sentence cross-entropy).
Validation: loss and MLM (and sentence) accuracy. Export: `text` with [MASK]s → the top
candidates of each.
"""

from __future__ import annotations

import itertools
import random

import keras_hub
import numpy as np
import tensorflow as tf

from berth_trainer.ahead import ahead
from berth_trainer.bert_pretrainer import SENTENCE_HEAD, BertPretrainer
from berth_trainer.config import DataFormat, SentencePrediction, Task, WholeWordMasking
from berth_trainer.corpus.documents import (
    Tokenize,
    no_text,
    packed_examples,
    read_documents,
    slice_parts,
)
from berth_trainer.corpus.google import check_google_records, parse_google
from berth_trainer.corpus.records import PACKED_FEATURES, check_records, parse_packed
from berth_trainer.tasks.base import (
    BertTask,
    Head,
    Totals,
    batch_totals,
    label_loss,
    positions_loss,
)

#: How many candidates the serving signature returns per [MASK].
TOP_K = 5

MLM_HEAD = Head(
    "mlm_head",
    {
        "cls/predictions/transform/dense/kernel": ("mlm_head", "intermediate_dense/kernel", ""),
        "cls/predictions/transform/dense/bias": ("mlm_head", "intermediate_dense/bias", ""),
        "cls/predictions/transform/LayerNorm/gamma": (
            "mlm_head",
            "intermediate_layer_norm/gamma",
            "",
        ),
        "cls/predictions/transform/LayerNorm/beta": (
            "mlm_head",
            "intermediate_layer_norm/beta",
            "",
        ),
        "cls/predictions/output_bias": ("mlm_head", "output_bias", ""),
    },
    {
        "cls.predictions.bias": "cls/predictions/output_bias",
        "cls.predictions.decoder.bias": "cls/predictions/output_bias",
    },
    family="mlm",
    required=True,
)
SENTENCE = Head(
    SENTENCE_HEAD,
    {
        "cls/seq_relationship/output_weights": (SENTENCE_HEAD, "kernel", "T"),
        "cls/seq_relationship/output_bias": (SENTENCE_HEAD, "bias", ""),
    },
    {
        "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
        "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
    },
    family="sentence",
)


class Pretraining(BertTask):
    name = Task.PRETRAINING
    formats = (DataFormat.TEXT, DataFormat.TFRECORD, DataFormat.GOOGLE_TFRECORD)
    heads = (MLM_HEAD, SENTENCE)

    def __init__(self, cfg, encoder) -> None:
        super().__init__(cfg, encoder)
        t, p = cfg.training, cfg.pretraining
        self.sentence_prediction = p.sentence_prediction != SentencePrediction.NONE
        # The pooler feeds the sentence head only.
        self.pooled = self.sentence_prediction
        self.architecture = "BertForPreTraining" if self.sentence_prediction else "BertForMaskedLM"
        self.masker = keras_hub.layers.MaskedLMMaskGenerator(
            vocabulary_size=len(encoder.vocabulary),
            mask_selection_rate=t.mask_probability,
            mask_token_id=encoder.mask_id,
            mask_selection_length=t.max_predictions_per_sequence,
            unselectable_token_ids=encoder.special_ids,
        )

    # --- data ----------------------------------------------------------------------------------

    def prepare(self, train, validation):
        super().prepare(train, validation)
        fmt = self.cfg.data.format
        for files, field in ((train, "data.train"), (validation, "data.validation")):
            if files and fmt == DataFormat.TFRECORD:
                check_records(files[0], self.cfg, field)
            elif files and fmt == DataFormat.GOOGLE_TFRECORD:
                vocabulary_size = len(self.encoder.vocabulary)
                check_google_records(files[0], self.cfg, field, vocabulary_size)

    def describe_shard(self, shard):
        index, count = shard
        files = self.train_files
        if self.cfg.data.format == DataFormat.TEXT:
            parts = slice_parts(files, index, count)
            where = ", ".join(f"{p.path}[{p.start}:{p.end}]" for p in parts)
            return f"TEXT slice {index}/{count}: the documents starting in bytes {where}"
        if len(files) >= count:
            return f"FILE shard {index}/{count}: {files[index::count]}"
        return f"DATA shard {index}/{count} (every {count}th record of {len(files)} file(s))"

    def dataset(self, batch_size, shard, skip=0):
        fmt = self.cfg.data.format
        ds = self._packed(self.train_files, shard, validation=False)
        if fmt != DataFormat.TEXT:
            ds = ds.repeat()  # a text corpus is re-packed each epoch, forever
        ds = self.shuffled(ds, skip)
        if fmt != DataFormat.GOOGLE_TFRECORD:  # its records are masked already (static)
            # Masking draws random numbers: in one sequential map they follow training.seed,
            # so a run is reproducible (in parallel calls the draws would interleave at random).
            ds = ds.map(self.masked)
        return ds.batch(batch_size, drop_remainder=True).prefetch(2)

    def _packed(self, files: list[str], shard: tuple[int, int], validation: bool):
        """Packed examples of this pipeline's share of `files` (unbatched); of googleTfrecord,
        masked examples `(inputs, labels)` already."""
        index, count = shard
        t = self.cfg.training
        if self.cfg.data.format == DataFormat.TEXT:
            return self._packed_text(files, shard, validation)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if count > 1 and len(files) >= count:
            ds = ds.shard(count, index)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1)
        if count > 1 and len(files) < count:
            ds = ds.shard(count, index)
        if self.cfg.data.format == DataFormat.GOOGLE_TFRECORD:
            parse = parse_google(
                t.sequence_length, t.max_predictions_per_sequence, self.sentence_prediction
            )
        else:
            parse = parse_packed(t.sequence_length)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

    def _packed_text(
        self, files: list[str], shard: tuple[int, int], validation: bool
    ) -> tf.data.Dataset:
        """Packed examples of this pipeline's slice of a text corpus, streamed (memory bounded
        by a shuffle buffer of documents, never by the corpus); training repeats forever, each
        epoch read, shuffled and packed afresh."""
        cfg, encoder = self.cfg, self.encoder
        index, count = shard
        field = "data.validation" if validation else "data.train"
        parts = slice_parts(files, index, count)
        if next(read_documents(parts, field), None) is None:  # fail now, not at step N
            raise no_text(field, files, index, count)
        tokenize = Tokenize(encoder.ids, encoder.vocabulary, cfg.pretraining.whole_word_masking)
        p, n = cfg.pretraining, cfg.training.sequence_length

        def epochs():
            """Packed examples, stacked 256 at a time (a Python call per chunk, not example)."""
            for epoch in itertools.count() if not validation else range(1):
                rng = random.Random(f"{cfg.training.seed}/{index}/{epoch}")
                examples = packed_examples(
                    parts, field, tokenize, p, n, encoder.specials, rng, not validation
                )
                while chunk := list(itertools.islice(examples, 256)):
                    yield {
                        k: np.asarray([getattr(e, k) for e in chunk], np.int32)
                        for k in PACKED_FEATURES
                    }

        def chunks():
            yield from self.relayed(ahead(epochs(), name="pack"))

        spec = {k: tf.TensorSpec([None, n], tf.int32) for k in PACKED_FEATURES[:3]}
        spec["sentence_label"] = tf.TensorSpec([None], tf.int32)
        return tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()

    def masked(self, packed: dict[str, tf.Tensor]) -> tuple[dict, dict]:
        """Dynamic MLM masking (fresh each epoch): 80% [MASK], 10% random, 10% unchanged; with
        whole-word masking every piece of a chosen word is masked."""
        e, t = self.encoder, self.cfg.training
        token_ids = packed["token_ids"]
        if self.cfg.pretraining.whole_word_masking == WholeWordMasking.NONE:
            m = self.masker(token_ids)
        else:
            m = whole_word_mask(
                token_ids,
                packed["word_starts"],
                tf.reduce_all(tf.not_equal(token_ids[:, None], e.special_ids), -1),
                t.mask_probability,
                t.max_predictions_per_sequence,
                e.mask_id,
                len(e.vocabulary),
            )
        p = t.max_predictions_per_sequence
        inputs = {
            "token_ids": tf.ensure_shape(tf.cast(m["token_ids"], tf.int32), [t.sequence_length]),
            "segment_ids": packed["segment_ids"],
            "padding_mask": tf.cast(tf.not_equal(token_ids, e.pad_id), tf.int32),
            "mask_positions": tf.ensure_shape(tf.cast(m["mask_positions"], tf.int32), [p]),
        }
        labels = {
            "mask_ids": tf.ensure_shape(tf.cast(m["mask_ids"], tf.int32), [p]),
            "mask_weights": tf.ensure_shape(tf.cast(m["mask_weights"], tf.float32), [p]),
        }
        if self.sentence_prediction:
            labels["sentence_label"] = packed["sentence_label"]
        return inputs, labels

    # --- model ---------------------------------------------------------------------------------

    def build(self, backbone):
        return BertPretrainer(
            backbone,
            sequence_length=self.cfg.training.sequence_length,
            max_predictions_per_sequence=self.cfg.training.max_predictions_per_sequence,
            sentence_classes=2 if self.sentence_prediction else 0,
            name="bert_pretraining",
        )

    def loss(self, outputs, labels):
        per_example, stats = positions_loss(
            outputs["logits"], labels["mask_ids"], labels["mask_weights"]
        )
        if "sentence_label" in labels:
            sentence, right = label_loss(outputs["sentence_logits"], labels["sentence_label"])
            per_example += sentence
            stats["sentence_correct"], stats["sentence_count"] = right["correct"], right["count"]
        return per_example, stats

    # --- validation and export -----------------------------------------------------------------

    def evaluate(self, model, batch_size):
        ds = self._packed(self.validation_files, (0, 1), validation=True)
        if self.cfg.data.format != DataFormat.GOOGLE_TFRECORD:  # masked already
            ds = ds.map(self.masked)
        run, totals = batch_totals(self, model), Totals()
        for features, labels in ds.batch(batch_size).prefetch(2):
            totals.add(run(features, labels)[1].numpy())
        return totals.metrics()

    def serve(self, model, archive):
        encoder = self.encoder
        vocab = tf.constant(encoder.vocabulary)
        p = self.cfg.training.max_predictions_per_sequence

        def fill(text):
            inputs = encoder.encode_texts(text)
            is_mask = tf.equal(inputs["token_ids"], encoder.mask_id)
            order = tf.argsort(tf.cast(tf.logical_not(is_mask), tf.int32), axis=-1, stable=True)
            positions = tf.cast(order[:, :p], tf.int32)
            valid = tf.gather(is_mask, positions, batch_dims=1)
            logits = model({**inputs, "mask_positions": positions}, training=False)["logits"]
            top = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32)), k=TOP_K)
            return {
                "top_k_tokens": tf.gather(vocab, top.indices),
                "top_k_ids": top.indices,
                "top_k_probabilities": top.values,
                "mask_positions": positions,
                "mask_valid": valid,
            }

        text = tf.TensorSpec([None], tf.string, name="text")
        archive.add_endpoint("serving_default", fill, input_signature=[text])

    @classmethod
    def prediction(cls, text, out):
        masks = [
            {
                "position": int(out["mask_positions"][j]),
                "top_k": [
                    {"token": tok.decode(), "probability": round(float(p), 4)}
                    for tok, p in zip(
                        out["top_k_tokens"][j], out["top_k_probabilities"][j], strict=True
                    )
                ],
            }
            for j in range(len(out["mask_valid"]))
            if out["mask_valid"][j]
        ]
        return {"text": text, "masks": masks}


def whole_word_mask(
    token_ids: tf.Tensor,
    word_starts: tf.Tensor,
    selectable: tf.Tensor,
    rate: float,
    max_predictions: int,
    mask_id: int,
    vocabulary_size: int,
) -> dict[str, tf.Tensor]:
    """Masked-LM inputs of one example where words (a token with `word_starts` 1 and the
    tokens after it with 0) are masked whole; static shapes throughout.

    Words are taken in a random order while their tokens fit in `min(max_predictions,
    round(rate * selectable tokens))`, leaving out words longer than that (so at least one word
    is masked when any fits); a special token, and the token after one, always start a word,
    so no word spans [CLS], [SEP] or padding. Returns what
    keras-hub's `MaskedLMMaskGenerator` does: token_ids, mask_positions, mask_ids,
    mask_weights.
    """
    n = token_ids.shape[0]
    after_special = tf.concat([[True], tf.logical_not(selectable[:-1])], 0)
    starts = (word_starts > 0) | tf.logical_not(selectable) | after_special
    word = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    length = tf.math.unsorted_segment_sum(tf.ones([n], tf.int32), word, n)
    word_ok = (tf.math.unsorted_segment_min(tf.cast(selectable, tf.int32), word, n) > 0) & (
        length > 0
    )
    count = tf.reduce_sum(tf.cast(selectable, tf.float32))
    budget = tf.minimum(max_predictions, tf.maximum(1, tf.cast(tf.round(count * rate), tf.int32)))
    word_ok &= length <= budget
    order = tf.argsort(tf.where(word_ok, tf.random.uniform([n]), 2.0))
    fits = (tf.cumsum(tf.gather(length, order)) <= budget) & tf.gather(word_ok, order)
    chosen = tf.scatter_nd(order[:, None], fits, [n])
    selected = tf.gather(chosen, word) & selectable
    positions = tf.argsort(tf.cast(tf.logical_not(selected), tf.int32), stable=True)
    positions = positions[:max_predictions]
    weights = tf.gather(selected, positions)
    draw = tf.random.uniform([n])
    random_ids = tf.random.uniform([n], 0, vocabulary_size, dtype=token_ids.dtype)
    replaced = tf.where(draw < 0.8, tf.cast(mask_id, token_ids.dtype), random_ids)
    replaced = tf.where(draw < 0.9, replaced, token_ids)
    return {
        "token_ids": tf.where(selected, replaced, token_ids),
        "mask_positions": tf.where(weights, positions, 0),
        "mask_ids": tf.where(weights, tf.gather(token_ids, positions), 0),
        "mask_weights": tf.cast(weights, tf.float32),
    }


TASK_CLASS = Pretraining
