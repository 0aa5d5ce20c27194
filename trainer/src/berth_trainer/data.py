"""Input pipelines: files → per-example features → static-shaped, per-worker-sharded batches.

Every pipeline maps one example at a time, then `batch(drop_remainder=True)`, so each batch
has the fixed shape the compiled step expects. Sharding across workers is explicit: by FILE when
there are at least as many files as input pipelines, by DATA (every n-th example) otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Callable

import keras_hub
import tensorflow as tf

from berth_trainer.config import DataConfig, DataFormat, Task, TrainerConfig
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.vocab import make_tokenizer

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
    for path in files:
        with tf.io.gfile.GFile(path, "r") as f:
            content = f.read()
        for where, row in _rows(content, path, data.format):
            absent = [k for k in wanted if k not in row or row[k] is None]
            if absent:
                raise TrainerError(
                    ExitCode.DATA_INVALID, f"{field}: {where}: missing field(s) {absent}"
                )
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
        self.tokenizer = make_tokenizer(vocabulary)
        ids = {tok: i for i, tok in enumerate(vocabulary)}
        self.pad_id, self.mask_id = ids["[PAD]"], ids["[MASK]"]
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
            unselectable_token_ids=[self.pad_id, ids["[CLS]"], ids["[SEP]"]],
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

    def masked(self, features: Features) -> tuple[Features, dict[str, tf.Tensor]]:
        """Dynamic MLM masking (fresh each epoch): 80% [MASK], 10% random, 10% unchanged."""
        m = self.masker(features["token_ids"])
        p = self.max_predictions
        inputs = dict(features, token_ids=m["token_ids"])
        inputs["mask_positions"] = tf.ensure_shape(tf.cast(m["mask_positions"], tf.int32), [p])
        labels = {
            "mask_ids": tf.ensure_shape(tf.cast(m["mask_ids"], tf.int32), [p]),
            "mask_weights": tf.ensure_shape(tf.cast(m["mask_weights"], tf.float32), [p]),
        }
        return inputs, labels


@dataclasses.dataclass
class DataPlan:
    """What the trainer needs to build its input: the sources, resolved and checked."""

    train_files: list[str]
    validation_files: list[str]
    train_rows: Tabular | None
    validation_rows: Tabular | None
    label_names: list[str] | None


def plan_data(cfg: TrainerConfig) -> DataPlan:
    """Resolve files and read tabular data now, so bad inputs fail before training starts."""
    d = cfg.data
    train = resolve_files(d.train, "data.train")
    valid = resolve_files(d.validation, "data.validation") if d.validation else []
    if cfg.task == Task.PRETRAINING:
        if d.format not in (DataFormat.TEXT, DataFormat.TFRECORD):
            raise TrainerError(
                ExitCode.CONFIG_INVALID, "data.format: pretraining reads text or tfrecord"
            )
        return DataPlan(train, valid, None, None, None)
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


def _raw_source(plan: DataPlan, cfg: TrainerConfig, validation: bool) -> tf.data.Dataset:
    files = plan.validation_files if validation else plan.train_files
    rows = plan.validation_rows if validation else plan.train_rows
    if rows is not None:
        columns: tuple = (rows.texts,) + ((rows.pairs,) if rows.pairs is not None else ())
        return tf.data.Dataset.from_tensor_slices((columns, rows.labels))
    return tf.data.Dataset.from_tensor_slices(files)


def _read_files(fmt: str) -> Callable[[tf.Tensor], tf.data.Dataset]:
    if fmt == DataFormat.TFRECORD:
        spec = {"token_ids": tf.io.VarLenFeature(tf.int64)}

        def read(path: tf.Tensor) -> tf.data.Dataset:
            parse = lambda r: tf.sparse.to_dense(tf.io.parse_single_example(r, spec)["token_ids"])  # noqa: E731
            return tf.data.TFRecordDataset(path).map(parse)

        return read
    return lambda path: tf.data.TextLineDataset(path).filter(
        lambda s: tf.strings.length(tf.strings.strip(s)) > 0
    )


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
    ds = _raw_source(plan, cfg, validation)
    tabular = plan.train_rows is not None
    files = plan.validation_files if validation else plan.train_files
    by_file = not tabular and len(files) >= count
    if count > 1 and by_file:
        ds = ds.shard(count, index)
    if not tabular:
        ds = ds.interleave(_read_files(cfg.data.format), cycle_length=1)
    if count > 1 and not by_file:
        ds = ds.shard(count, index)
    if not validation:
        ds = ds.shuffle(4096, seed=cfg.training.seed, reshuffle_each_iteration=True).repeat()
        ds = ds.skip(skip_examples)
    pretraining = cfg.task == Task.PRETRAINING
    tokenized = cfg.data.format == DataFormat.TFRECORD

    def encode(*example):
        if pretraining:
            (raw,) = example
            ids = tf.cast(raw, tf.int32) if tokenized else encoder.tokenizer(raw)
            return encoder.pack((ids,))
        texts, label = example
        features = encoder.pack(tuple(encoder.tokenizer(t) for t in texts))
        return features, {"label": tf.cast(label, tf.int32)}

    ds = ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    if pretraining:
        # Masking draws random numbers: in one sequential map they follow training.seed, so a
        # run is reproducible (in parallel calls the draws would interleave at random).
        ds = ds.map(encoder.masked)
    return ds.batch(batch_size, drop_remainder=not validation).prefetch(2)


def describe_shard(plan: DataPlan, shard: tuple[int, int], validation: bool = False) -> str:
    """How this pipeline is sharded, for the start-up log (tests check shards are disjoint)."""
    index, count = shard
    files = plan.validation_files if validation else plan.train_files
    if plan.train_rows is None and len(files) >= count:
        return f"FILE shard {index}/{count}: {files[index::count]}"
    return f"DATA shard {index}/{count} (every {count}th example of {len(files)} file(s))"
