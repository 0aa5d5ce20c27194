"""Input pipelines: files → per-example features → static-shaped, per-worker-sharded batches.

Every pipeline maps one example at a time, then `batch(drop_remainder=True)`, so each batch
has the fixed shape the compiled step expects. Sharding across workers is explicit: by FILE when
there are at least as many files as input pipelines, by DATA (every n-th example, or for a
pre-training text corpus every n-th document) otherwise.

Pre-training text is read and tokenized once per pipeline into documents, which
`packing.pack` turns into full examples again each epoch (documents in a new order, new
sentence pairs), drawn from `training.seed`; masking is dynamic, per example. TFRecords
written by `berth-trainer prepare` are already packed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import random
from typing import Any

import keras_hub
import numpy as np
import tensorflow as tf

from berth_trainer.config import (
    DataConfig,
    DataFormat,
    SentencePrediction,
    Task,
    TrainerConfig,
    WholeWordMasking,
)
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.packing import Document, Sentence, Specials, pack
from berth_trainer.vocab import load_vocabulary, make_tokenizer

log = logging.getLogger("berth_trainer")

#: Dense features of every example (the model's named inputs).
Features = dict[str, tf.Tensor]


def resolve_files(pattern: str, field: str) -> list[str]:
    """Files matching a comma-separated list of paths/globs; an error names `field` if none."""
    files: set[str] = set()
    for part in (p.strip() for p in pattern.split(",")):
        if part:
            files.update(tf.io.gfile.glob(part))
    if not files:
        raise TrainerError(ExitCode.DATA_INVALID, f"{field}: no file matches {pattern!r}")
    for f in sorted(files):
        if tf.io.gfile.stat(f).length == 0:
            raise TrainerError(ExitCode.DATA_INVALID, f"{field}: file is empty: {f}")
    return sorted(files)


@dataclasses.dataclass
class Tabular:
    """Classification examples read from csv/tsv/jsonl (small enough to hold in memory)."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int]


def read_tabular(
    files: list[str], data: DataConfig, label_names: list[str] | None, field: str
) -> tuple[Tabular, list[str]]:
    """Rows of csv/tsv/jsonl files; labels become indices into `label_names` (learned if None)."""
    texts: list[str] = []
    pairs: list[str] | None = [] if data.text_pair_field else None
    raw_labels: list[str] = []
    wanted = [data.text_field, data.label_field] + ([data.text_pair_field] if pairs else [])
    for _, row in read_rows(files, data.format, wanted, field):
        texts.append(str(row[data.text_field]))
        raw_labels.append(str(row[data.label_field]).strip())
        if pairs is not None:
            pairs.append(str(row[data.text_pair_field]))
    if not texts:
        raise TrainerError(ExitCode.DATA_INVALID, f"{field}: no examples in {files}")
    if label_names is None:
        distinct = sorted(set(raw_labels))
        if all(v.isdigit() for v in distinct):
            label_names = [str(i) for i in range(max(int(v) for v in distinct) + 1)]
        else:
            label_names = distinct
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(raw_labels) - set(index))
    if unknown:
        raise TrainerError(
            ExitCode.DATA_INVALID, f"{field}: unknown label(s) {unknown[:5]} (known: {label_names})"
        )
    return Tabular(texts, pairs, [index[v] for v in raw_labels]), label_names


def read_rows(files: list[str], fmt: str, wanted: list[str], field: str):
    """(`file:line`, row) of csv/tsv/jsonl `files`; a row without a `wanted` key is an error
    naming `field`, file and line."""
    for path in files:
        with tf.io.gfile.GFile(path, "r") as f:
            content = f.read()
        for where, row in _rows(content, path, fmt):
            absent = [k for k in wanted if k not in row or row[k] is None]
            if absent:
                raise TrainerError(
                    ExitCode.DATA_INVALID, f"{field}: {where}: missing field(s) {absent}"
                )
            yield where, row


def _rows(content: str, path: str, fmt: str):
    if fmt == DataFormat.JSONL:
        for n, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TrainerError(
                        ExitCode.DATA_INVALID, f"{path}:{n}: invalid JSON: {err}"
                    ) from err
                if not isinstance(row, dict):
                    raise TrainerError(ExitCode.DATA_INVALID, f"{path}:{n}: not a JSON object")
                yield f"{path}:{n}", row
        return
    tsv = fmt == DataFormat.TSV
    reader = csv.reader(
        io.StringIO(content),
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        strict=True,
    )
    try:
        header = next(reader)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise TrainerError(
                    ExitCode.DATA_INVALID,
                    f"{path}:{reader.line_num}: malformed row: expected {len(header)} fields "
                    f"({', '.join(header)}), got {len(row)}",
                )
            yield f"{path}:{reader.line_num}", dict(zip(header, row, strict=True))
    except csv.Error as err:
        message = f"{path}:{reader.line_num}: malformed: {err}"
        raise TrainerError(ExitCode.DATA_INVALID, message) from err


class ExampleEncoder:
    """Raw text (or pre-tokenized ids) → the model's fixed-length features, one example."""

    def __init__(self, cfg: TrainerConfig, vocabulary: list[str]) -> None:
        t = cfg.training
        self.sequence_length = t.sequence_length
        self.vocabulary = vocabulary
        self.tokenizer = make_tokenizer(vocabulary)
        ids = {tok: i for i, tok in enumerate(vocabulary)}
        self.pad_id, self.mask_id = ids["[PAD]"], ids["[MASK]"]
        self.specials = Specials.of(vocabulary)
        self.special_ids = list(dataclasses.astuple(self.specials))
        self.whole_word = cfg.pretraining.whole_word_masking
        self.sentence_prediction = cfg.pretraining.sentence_prediction != SentencePrediction.NONE
        self.mask_probability = t.mask_probability
        self.packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=t.sequence_length,
            start_value=ids["[CLS]"],
            end_value=ids["[SEP]"],
            pad_value=self.pad_id,
        )
        self.masker = keras_hub.layers.MaskedLMMaskGenerator(
            vocabulary_size=len(vocabulary),
            mask_selection_rate=t.mask_probability,
            mask_token_id=self.mask_id,
            mask_selection_length=t.max_predictions_per_sequence,
            unselectable_token_ids=self.special_ids,
        )
        self.max_predictions = t.max_predictions_per_sequence

    def pack(self, segments: tuple[tf.Tensor, ...]) -> Features:
        token_ids, segment_ids = self.packer(segments if len(segments) > 1 else segments[0])
        n = self.sequence_length
        token_ids = tf.ensure_shape(tf.cast(token_ids, tf.int32), [n])
        return {
            "token_ids": token_ids,
            "segment_ids": tf.ensure_shape(tf.cast(segment_ids, tf.int32), [n]),
            "padding_mask": tf.cast(tf.not_equal(token_ids, self.pad_id), tf.int32),
        }

    def encode_texts(self, *texts: tf.Tensor) -> Features:
        """Raw strings `[batch]` (one tensor per segment) → a batch of packed features; what
        classification and regression train on and what their exports serve."""
        token_ids, segment_ids = self.packer(
            tuple(self.tokenizer(x) for x in texts) if len(texts) > 1 else self.tokenizer(texts[0])
        )
        token_ids = tf.cast(token_ids, tf.int32)
        return {
            "token_ids": token_ids,
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(tf.not_equal(token_ids, self.pad_id), tf.int32),
        }

    def masked(self, packed: Features) -> tuple[Features, dict[str, tf.Tensor]]:
        """Dynamic MLM masking (fresh each epoch): 80% [MASK], 10% random, 10% unchanged; with
        whole-word masking every piece of a chosen word is masked."""
        token_ids = packed["token_ids"]
        if self.whole_word == WholeWordMasking.NONE:
            m = self.masker(token_ids)
        else:
            m = whole_word_mask(
                token_ids,
                packed["word_starts"],
                tf.reduce_all(tf.not_equal(token_ids[:, None], self.special_ids), -1),
                self.mask_probability,
                self.max_predictions,
                self.mask_id,
                len(self.vocabulary),
            )
        p = self.max_predictions
        inputs = {
            "token_ids": tf.ensure_shape(tf.cast(m["token_ids"], tf.int32), [self.sequence_length]),
            "segment_ids": packed["segment_ids"],
            "padding_mask": tf.cast(tf.not_equal(token_ids, self.pad_id), tf.int32),
            "mask_positions": tf.ensure_shape(tf.cast(m["mask_positions"], tf.int32), [p]),
        }
        labels = {
            "mask_ids": tf.ensure_shape(tf.cast(m["mask_ids"], tf.int32), [p]),
            "mask_weights": tf.ensure_shape(tf.cast(m["mask_weights"], tf.float32), [p]),
        }
        if self.sentence_prediction:
            labels["sentence_label"] = packed["sentence_label"]
        return inputs, labels


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


def read_documents(
    files: list[str],
    tokenizer,
    vocabulary: list[str],
    whole_word: str,
    shard: tuple[int, int] = (0, 1),
) -> list[Document]:
    """Documents of text files (one sentence per line, a blank line between documents),
    tokenized; with `shard` (index, count) every count-th document only.

    Word starts: wordPiece and none from the vocabulary (a `##` piece continues a word),
    chinese from jieba's segmentation (every character of a word after its first continues it).
    """
    continues = np.array([t.startswith("##") for t in vocabulary])
    documents: list[list[str]] = [[]]
    for path in files:
        with tf.io.gfile.GFile(path, "r") as f:
            for line in f:
                if line.strip():
                    documents[-1].append(line.strip())
                elif documents[-1]:
                    documents.append([])
        if documents[-1]:
            documents.append([])
    index, count = shard
    mine = [d for d in documents if d][index::count]
    lines = [line for doc in mine for line in doc]
    tokenized: list[Sentence] = []
    for start in range(0, len(lines), 512):
        batch = lines[start : start + 512]
        if whole_word == WholeWordMasking.CHINESE:
            tokenized += _segmented(batch, tokenizer)
        else:
            for ids in _ids(tokenizer, batch):
                tokenized.append(Sentence.of(ids, (~continues[ids]).astype(np.int32)))
    out, k = [], 0
    for doc in mine:
        sentences = [s for s in tokenized[k : k + len(doc)] if len(s)]  # e.g. only "\u200b"
        out += [sentences] if sentences else []
        k += len(doc)
    return out


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    tokens = tokenizer(tf.constant(texts))
    return tokens.to_list() if hasattr(tokens, "to_list") else [list(t) for t in tokens]


def _segmented(lines: list[str], tokenizer) -> list[Sentence]:
    """Each line's words from jieba; a word's first word piece starts it."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    words = [[w for w in jieba.lcut(line) if w.strip()] for line in lines]
    flat = _ids(tokenizer, [w for ws in words for w in ws] or [""])
    out, k = [], 0
    for ws in words:
        ids, starts = [], []
        for pieces in flat[k : k + len(ws)]:
            ids += pieces
            starts += [1] + [0] * (len(pieces) - 1)
        k += len(ws)
        out.append(Sentence.of(ids, starts))
    return out


@dataclasses.dataclass
class DataPlan:
    """What the trainer needs to build its input: the sources, resolved and checked."""

    train_files: list[str]
    validation_files: list[str]
    train_rows: Tabular | None
    validation_rows: Tabular | None
    label_names: list[str] | None
    #: What a DATA shard takes every n-th of: document (text), record or example (tabular).
    unit: str = "example"
    #: The fine-tuning task (`tasks.FineTuning`) and its encoded splits, if the task has one.
    task: Any = None
    train_encoded: Any = None
    validation_encoded: Any = None


def plan_data(cfg: TrainerConfig, encoder: ExampleEncoder | None = None) -> DataPlan:
    """Resolve files and read tabular data now, so bad inputs fail before training starts
    (a fine-tuning task encodes its data with `encoder`)."""
    from berth_trainer.tasks import TASKS, for_task

    d = cfg.data
    train = resolve_files(d.train, "data.train")
    valid = resolve_files(d.validation, "data.validation") if d.validation else []
    if cfg.task in TASKS:
        task = for_task(cfg, encoder or ExampleEncoder(cfg, load_vocabulary(cfg.vocabulary)))
        if d.format not in task.formats:
            raise TrainerError(
                ExitCode.CONFIG_INVALID,
                f"data.format: {cfg.task} reads {', '.join(map(str, task.formats))}",
            )
        encoded, names = task.read(train, "data.train", None)
        vencoded = task.read(valid, "data.validation", names)[0] if valid else None
        for split, files, field in ((encoded, train, "train"), (vencoded, valid, "validation")):
            if split is not None and not len(split):
                raise TrainerError(ExitCode.DATA_INVALID, f"data.{field}: no examples in {files}")
        return DataPlan(
            train,
            valid,
            None,
            None,
            names,
            task=task,
            train_encoded=encoded,
            validation_encoded=vencoded,
        )
    if cfg.task == Task.PRETRAINING:
        if d.format not in (DataFormat.TEXT, DataFormat.TFRECORD):
            raise TrainerError(
                ExitCode.CONFIG_INVALID, "data.format: pretraining reads text or tfrecord"
            )
        if d.format == DataFormat.TFRECORD:
            for files, field in ((train, "data.train"), (valid, "data.validation")):
                if files:
                    check_records(files[0], cfg, field)
        unit = "record" if d.format == DataFormat.TFRECORD else "document"
        return DataPlan(train, valid, None, None, None, unit)
    if d.format not in (DataFormat.CSV, DataFormat.TSV, DataFormat.JSONL):
        raise TrainerError(
            ExitCode.CONFIG_INVALID, "data.format: classification reads csv, tsv or jsonl"
        )
    rows, names = read_tabular(train, d, None, "data.train")
    if len(names) > (cfg.training.num_classes or 0):
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"data.train: {len(names)} distinct labels {names[:10]} but training.numClasses is "
            f"{cfg.training.num_classes}",
        )
    names += [str(i) for i in range(len(names), cfg.training.num_classes or 0)]
    vrows = read_tabular(valid, d, names, "data.validation")[0] if valid else None
    return DataPlan(train, valid, rows, vrows, names)


#: Features of a packed pre-training example (`berth-trainer prepare` writes them as int64).
PACKED_FEATURES = ("token_ids", "segment_ids", "word_starts", "sentence_label")


def check_records(path: str, cfg: TrainerConfig, field: str) -> None:
    """The first record of `path` must be a packed example of training.sequenceLength."""
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    if first is None:
        raise TrainerError(ExitCode.DATA_INVALID, f"{field}: no records in {path}")
    example = tf.train.Example.FromString(first.numpy()).features.feature
    absent = [k for k in PACKED_FEATURES if k not in example]
    if absent:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} is not a packed pre-training file (no {absent}); write it with "
            "`berth-trainer prepare --sequence-length N` (files from before packing existed "
            "must be prepared again)",
        )
    length = len(example["token_ids"].int64_list.value)
    if length != cfg.training.sequence_length:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} holds examples of {length} tokens but training.sequenceLength is "
            f"{cfg.training.sequence_length}; prepare it again with --sequence-length "
            f"{cfg.training.sequence_length}",
        )


def _parse_packed(sequence_length: int):
    spec = {k: tf.io.FixedLenFeature([sequence_length], tf.int64) for k in PACKED_FEATURES[:3]}
    spec["sentence_label"] = tf.io.FixedLenFeature([], tf.int64)

    def parse(record: tf.Tensor) -> Features:
        return {
            k: tf.cast(v, tf.int32) for k, v in tf.io.parse_single_example(record, spec).items()
        }

    return parse


def _packed_text(
    plan: DataPlan,
    cfg: TrainerConfig,
    encoder: ExampleEncoder,
    shard: tuple[int, int],
    validation: bool,
) -> tf.data.Dataset:
    """Packed examples of a text corpus; training repeats forever, each epoch re-packed."""
    index, count = shard
    files = plan.validation_files if validation else plan.train_files
    by_file = len(files) >= count
    documents = read_documents(
        files[index::count] if by_file else files,
        encoder.tokenizer,
        encoder.vocabulary,
        cfg.pretraining.whole_word_masking,
        (0, 1) if by_file else shard,
    )
    field = "data.validation" if validation else "data.train"
    if not documents:
        raise TrainerError(
            ExitCode.DATA_INVALID, f"{field}: no text in input pipeline {index}'s shard of {files}"
        )
    p, n = cfg.pretraining, cfg.training.sequence_length
    epochs = 1 if validation else None  # training repeats forever

    def chunks():
        """Packed examples, stacked 256 at a time (one Python call per chunk, not per example)."""
        epoch = 0
        while epochs is None or epoch < epochs:
            rng = random.Random(f"{cfg.training.seed}/{index}/{epoch}")
            order = list(documents)
            if not validation:
                rng.shuffle(order)
            examples = pack(
                order,
                p.packing,
                n,
                encoder.specials,
                rng,
                p.sentence_prediction,
                p.short_sequence_probability,
            )
            while chunk := list(itertools.islice(examples, 256)):
                yield {
                    k: np.asarray([getattr(e, k) for e in chunk], np.int32) for k in PACKED_FEATURES
                }
            epoch += 1

    spec = {k: tf.TensorSpec([None, n], tf.int32) for k in PACKED_FEATURES[:3]}
    spec["sentence_label"] = tf.TensorSpec([None], tf.int32)
    return tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()


def _raw_source(plan: DataPlan, validation: bool) -> tf.data.Dataset:
    rows = plan.validation_rows if validation else plan.train_rows
    assert rows is not None
    columns: tuple = (rows.texts,) + ((rows.pairs,) if rows.pairs is not None else ())
    return tf.data.Dataset.from_tensor_slices((columns, rows.labels))


def make_dataset(
    plan: DataPlan,
    cfg: TrainerConfig,
    encoder: ExampleEncoder,
    batch_size: int,
    shard: tuple[int, int],
    skip_examples: int = 0,
    validation: bool = False,
) -> tf.data.Dataset:
    """Batches of (features, labels) for one input pipeline (`shard` = (index, count))."""
    index, count = shard
    files = plan.validation_files if validation else plan.train_files
    if plan.task is not None:
        encoded = plan.validation_encoded if validation else plan.train_encoded
        ds = tf.data.Dataset.from_tensor_slices((encoded.features, encoded.labels))
        if count > 1:
            ds = ds.shard(count, index)
    elif cfg.task != Task.PRETRAINING:
        ds = _raw_source(plan, validation)
        if count > 1:
            ds = ds.shard(count, index)
    elif cfg.data.format == DataFormat.TFRECORD:
        ds = tf.data.Dataset.from_tensor_slices(files)
        if count > 1 and len(files) >= count:
            ds = ds.shard(count, index)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1)
        if count > 1 and len(files) < count:
            ds = ds.shard(count, index)
        ds = ds.map(
            _parse_packed(cfg.training.sequence_length), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        ds = _packed_text(plan, cfg, encoder, shard, validation)
    if not validation:
        if cfg.data.format == DataFormat.TFRECORD or cfg.task != Task.PRETRAINING:
            ds = ds.repeat()
        ds = ds.shuffle(4096, seed=cfg.training.seed, reshuffle_each_iteration=True)
        ds = ds.skip(skip_examples)
    if plan.task is not None:
        return ds.batch(batch_size, drop_remainder=not validation).prefetch(2)  # encoded
    if cfg.task == Task.PRETRAINING:
        # Masking draws random numbers: in one sequential map they follow training.seed, so a
        # run is reproducible (in parallel calls the draws would interleave at random).
        ds = ds.map(encoder.masked)
    else:

        def encode(texts, label):
            features = encoder.pack(tuple(encoder.tokenizer(t) for t in texts))
            return features, {"label": tf.cast(label, tf.int32)}

        ds = ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=not validation).prefetch(2)


def describe_shard(plan: DataPlan, shard: tuple[int, int], validation: bool = False) -> str:
    """How this pipeline is sharded, for the start-up log (tests check shards are disjoint)."""
    index, count = shard
    files = plan.validation_files if validation else plan.train_files
    if plan.train_rows is None and plan.task is None and len(files) >= count:
        return f"FILE shard {index}/{count}: {files[index::count]}"
    return f"DATA shard {index}/{count} (every {count}th {plan.unit} of {len(files)} file(s))"
