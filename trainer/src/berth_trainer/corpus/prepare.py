"""`berth-trainer prepare`: a text corpus → packed pre-training TFRecords, one slice of the
input per worker, in bounded memory.

Worker i of n reads bytes [i*T/n, (i+1)*T/n) of the input (`documents.slice_parts`), streams
its documents through the tokenizer, a bounded shuffle buffer and `packing.pack`, and deals
the examples round-robin over its S shards `PREFIX-KKKKK-of-MMMMM` (K = i*S + j, M = n*S), so
the n slices together form one dataset whose every document was read exactly once. A shard is
written under a temporary dot-name and renamed when complete: a worker killed mid-shard
leaves nothing a training would read. Under `data.prepare` the shards go to its output folder
(`train-…`, `validation-…`), each slice ends with a marker `slice-IIIII-of-NNNNN.json`
holding the fingerprint of its input and settings, and a slice whose marker matches is not
prepared again; `prepared(cfg)` is how a training finds the shards.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import time

import tensorflow as tf

from berth_trainer.config import DataFormat, PretrainingConfig, TrainerConfig
from berth_trainer.corpus.documents import (
    Part,
    Tokenize,
    no_text,
    packed_examples,
    slice_parts,
)
from berth_trainer.corpus.records import serialize
from berth_trainer.data import resolve_files
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.packing import Specials
from berth_trainer.vocab import load_vocabulary, make_tokenizer, ragged_ids

log = logging.getLogger("berth_trainer")

#: Bumped when the records change, so that older prepared data is prepared again.
VERSION = 2


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the examples depend on besides the input (all of it goes into the fingerprint)."""

    vocabulary: str
    sequence_length: int
    pretraining: PretrainingConfig
    seed: int = 0
    workers: int = 1
    shards: int = 1  # per worker

    def check_worker(self, worker: int) -> None:
        """`--worker` must name one of the slices."""
        if not 0 <= worker < self.workers:
            raise TrainerError(
                ExitCode.CONFIG_INVALID, f"--worker: {worker} is not in 0..{self.workers - 1}"
            )


def shard_paths(prefix: str, worker: int, s: Settings, suffix: str = "") -> list[str]:
    """The shards worker `worker` writes; a single shard of a single worker is `prefix` itself.

    >>> shard_paths("out/train", 1, Settings("v", 8, PretrainingConfig(), workers=2, shards=2))
    ['out/train-00002-of-00004', 'out/train-00003-of-00004']
    """
    total = s.workers * s.shards
    if total == 1 and not suffix:
        return [prefix]
    first = worker * s.shards
    return [f"{prefix}-{k:05d}-of-{total:05d}{suffix}" for k in range(first, first + s.shards)]


def partial_path(path: str) -> str:
    """Where a shard is written until it is complete (a dot-name no data glob picks up)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.partial")


class Progress:
    """Input bytes read and examples written by this worker: Prometheus gauges on
    `metrics_port` (0 = off) and a log line every `every` seconds."""

    def __init__(self, total_bytes: int, metrics_port: int = 0, every: float = 30.0) -> None:
        self.total, self.done, self.examples = total_bytes, 0, 0
        self.every, self.started = every, time.monotonic()
        self._last = self.started
        self._gauges = {}
        if metrics_port:
            import prometheus_client as prom

            registry = prom.CollectorRegistry()
            for name, doc in (
                ("berth_prepare_input_bytes", "Input bytes this prepare worker has read."),
                ("berth_prepare_input_total_bytes", "Input bytes of this worker's slice."),
                ("berth_prepare_examples", "Examples this prepare worker has written."),
            ):
                self._gauges[name] = prom.Gauge(name, doc, registry=registry)
            self._gauges["berth_prepare_input_total_bytes"].set(total_bytes)
            try:
                prom.start_http_server(metrics_port, registry=registry)
            except OSError as err:
                log.warning("metrics port %d unavailable: %s", metrics_port, err)

    def read(self, n: int) -> None:
        self.done += n
        if self._gauges:
            self._gauges["berth_prepare_input_bytes"].set(self.done)
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.info("preparing", extra={"fields": self.fields()})

    def wrote(self, n: int = 1) -> None:
        self.examples += n
        if self._gauges:
            self._gauges["berth_prepare_examples"].set(self.examples)

    def fields(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return {
            "input_bytes": self.done,
            "input_total_bytes": self.total,
            "examples": self.examples,
            "mb_per_second": round(self.done / seconds / 1e6, 2),
        }


def write_slice(
    parts: list[Part],
    field: str,
    paths: list[str],
    worker: int,
    s: Settings,
    tokenize: Tokenize,
    specials: Specials,
    progress: Progress,
    shuffle: bool = True,
) -> tuple[dict[str, int], list[str]]:
    """Worker `worker`'s slice (`parts`) packed into `paths` (written under temporary names,
    renamed when complete; a shard that would be empty is not written). Returns the counts and
    the shards written."""
    rng = random.Random(f"{s.seed}/{field}/{worker}/{s.workers}")
    examples = packed_examples(
        parts,
        field,
        tokenize,
        s.pretraining,
        s.sequence_length,
        specials,
        rng,
        shuffle,
        progress.read,
        overlap=True,
    )
    for path in paths:
        tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    writers = [tf.io.TFRecordWriter(partial_path(path)) for path in paths]
    counts = [0] * len(paths)
    tokens = n = 0
    try:
        while chunk := list(itertools.islice(examples, 256)):
            records, real = serialize(chunk, specials.pad)
            for record in records:
                writers[n % len(paths)].write(record)
                counts[n % len(paths)] += 1
                n += 1
            tokens += real
            progress.wrote(len(records))
    finally:
        for w in writers:
            w.close()
    for path, count in zip(paths, counts, strict=True):
        if count:
            tf.io.gfile.rename(partial_path(path), path, overwrite=True)
        else:
            tf.io.gfile.remove(partial_path(path))
    written = [os.path.basename(p) for p, count in zip(paths, counts, strict=True) if count]
    return {"examples": sum(counts), "tokens": tokens}, written


def prepare_files(
    pattern: str,
    output: str,
    s: Settings,
    worker: int = 0,
    metrics_port: int = 0,
) -> dict[str, float]:
    """`berth-trainer prepare --input PATTERN --output PREFIX`: worker `worker`'s slice of the
    files matching `pattern` into its shards of `output` (see `shard_paths`)."""
    s.check_worker(worker)
    files = resolve_files(pattern, "--input")
    tokenize, specials = _tokenizer(s.vocabulary, s.pretraining.whole_word_masking)
    parts = slice_parts(files, worker, s.workers)
    progress = Progress(sum(p.size for p in parts), metrics_port)
    counts, _ = write_slice(
        parts, "--input", shard_paths(output, worker, s), worker, s, tokenize, specials, progress
    )
    if not counts["examples"] and s.workers == 1:
        raise no_text("--input", files)
    return _summary(counts, s, progress)


def prepare_config(cfg: TrainerConfig, worker: int, metrics_port: int = 0) -> dict[str, float]:
    """`berth-trainer prepare --config CFG --worker I`: slice I of data.train (and
    data.validation) into data.prepare.output, unless its marker says it is done already."""
    s, out = settings_of(cfg), cfg.data.prepare.output
    s.check_worker(worker)
    splits = _splits(cfg)
    print_ = fingerprint(splits, s)
    marker = marker_path(out, worker, s.workers)
    if _marker(marker).get("fingerprint") == print_:
        log.info("slice %d of %d is prepared already: %s", worker, s.workers, marker)
        return {"skipped": 1}
    tokenize, specials = _tokenizer(s.vocabulary, s.pretraining.whole_word_masking)
    parts = {field: slice_parts(files, worker, s.workers) for field, files in splits.items()}
    progress = Progress(sum(p.size for ps in parts.values() for p in ps), metrics_port)
    written: dict[str, list[str]] = {}
    totals = {"examples": 0, "tokens": 0}
    for field, field_parts in parts.items():
        name = field.removeprefix("data.")
        paths = shard_paths(os.path.join(out, name), worker, s, ".tfrecord")
        counts, written[name] = write_slice(
            field_parts,
            field,
            paths,
            worker,
            s,
            tokenize,
            specials,
            progress,
            shuffle=field == "data.train",
        )
        totals = {**totals, f"{name}_examples": counts["examples"]}
        totals.update({k: totals[k] + counts[k] for k in counts})
    record = {"fingerprint": print_, "shards": written, **totals, "input_bytes": progress.done}
    with tf.io.gfile.GFile(partial_path(marker), "w") as f:
        f.write(json.dumps(record, indent=1))
    tf.io.gfile.rename(partial_path(marker), marker, overwrite=True)
    return _summary(totals, s, progress)


def prepared(cfg: TrainerConfig) -> TrainerConfig:
    """The config a training runs: with data.prepare, its shards as data.format tfrecord once
    every slice's marker matches the input and settings; an error naming the slices that are
    missing or stale otherwise."""
    if cfg.data.prepare is None:
        return cfg
    s, out = settings_of(cfg), cfg.data.prepare.output
    splits = _splits(cfg)
    print_ = fingerprint(splits, s)
    markers = [_marker(marker_path(out, i, s.workers)) for i in range(s.workers)]
    missing = [i for i, m in enumerate(markers) if m.get("fingerprint") != print_]
    if missing:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"data.prepare: slice(s) {', '.join(map(str, missing[:10]))} of {s.workers} in "
            f"{out} are not prepared (or were prepared from other input or settings): run "
            "`berth-trainer prepare --config CONFIG --worker I` for each (the operator and "
            "`berth run` do so before training)",
        )
    files = {}
    for field in splits:
        name = field.removeprefix("data.")
        names = sorted({n for m in markers for n in m["shards"].get(name, [])})
        if not names:
            raise no_text(field, splits[field])
        files[name] = ",".join(os.path.join(out, n) for n in names)
    data = cfg.data.model_copy(
        update={
            "format": DataFormat.TFRECORD,
            "train": files["train"],
            "validation": files.get("validation"),
            "prepare": None,
        }
    )
    return cfg.model_copy(update={"data": data})


def settings_of(cfg: TrainerConfig) -> Settings:
    p = cfg.data.prepare
    return Settings(
        cfg.vocabulary,
        cfg.training.sequence_length,
        cfg.pretraining,
        cfg.training.seed,
        p.workers if p else 1,
        p.shards_per_worker if p else 1,
    )


def marker_path(output: str, worker: int, workers: int) -> str:
    return os.path.join(output, f"slice-{worker:05d}-of-{workers:05d}.json")


def fingerprint(splits: dict[str, list[str]], s: Settings) -> str:
    """A digest of the input files (names, sizes, modification times), the vocabulary's bytes
    and every setting the examples depend on."""
    with tf.io.gfile.GFile(s.vocabulary, "rb") as f:
        vocabulary = hashlib.sha256(f.read()).hexdigest()
    inputs = {
        field: [(f, (st := tf.io.gfile.stat(f)).length, st.mtime_nsec) for f in files]
        for field, files in splits.items()
    }
    settings = {
        "version": VERSION,
        "inputs": inputs,
        "vocabulary": vocabulary,
        "sequence_length": s.sequence_length,
        "pretraining": s.pretraining.model_dump(mode="json"),
        "seed": s.seed,
        "workers": s.workers,
        "shards": s.shards,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _splits(cfg: TrainerConfig) -> dict[str, list[str]]:
    splits = {"data.train": resolve_files(cfg.data.train, "data.train")}
    if cfg.data.validation:
        splits["data.validation"] = resolve_files(cfg.data.validation, "data.validation")
    return splits


def _marker(path: str) -> dict:
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except (tf.errors.NotFoundError, json.JSONDecodeError):
        return {}


@functools.lru_cache(maxsize=2)
def _tokenizer(vocabulary: str, whole_word: str) -> tuple[Tokenize, Specials]:
    """The tokenizer (traced once a process: tests prepare several slices in one)."""
    tokens = load_vocabulary(vocabulary)
    tokenize = Tokenize(ragged_ids(make_tokenizer(tokens)), tokens, whole_word)
    return tokenize, Specials.of(tokens)


def _summary(counts: dict[str, int], s: Settings, progress: Progress) -> dict[str, float]:
    examples = counts["examples"]
    return {
        **{k: v for k, v in counts.items() if k != "tokens"},
        "shards": s.shards,
        "non_padding_fraction": round(counts["tokens"] / max(examples * s.sequence_length, 1), 4),
        **progress.fields(),
    }
