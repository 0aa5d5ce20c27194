"""What every task is to the trainer: `BertTask`, and `ExampleTask` for the fine-tuning tasks
whose data is a stream of examples encoded a chunk at a time.

A task owns its config block, its inputs (a `tf.data` pipeline, sharded per worker and
resumable), its head (`Head`: one spec of its layer and weight names), its loss and the
statistics the step counts, its validation (one pass, reduced to metrics) and its serving
signature. The runner, the step, the export and the checkpoint importers ask the task and never
name one.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.ahead import ahead
from berth_trainer.config import DataFormat, Task, TrainerConfig
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.textfiles import no_examples
from berth_trainer.train_step import STATS, rates, step_stats

if TYPE_CHECKING:
    from berth_trainer.data import ExampleEncoder

log = logging.getLogger("berth_trainer")
T = TypeVar("T")

#: Examples encoded together (one tokenizer call); training and validation read a chunk at a
#: time, so memory does not grow with a split's size.
CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Head:
    """A head's names everywhere it is named.

    `weights`: Google TF1 name → (our layer, weight, reshape kind) of each of its weights (a
    kind "T" kernel is transposed). `huggingface`: Hugging Face name → TF1 name, for the names
    no rule derives (`huggingface.hf_to_tf1`). `family`: heads of one family initialise each
    other from a Berth checkpoint (pretraining's and seq2seq's MLM head; "": only a checkpoint
    of the same task). `required`: an init checkpoint must have it (else it starts fresh, with
    a warning).
    """

    layer: str
    weights: Mapping[str, tuple[str, str, str]]
    huggingface: Mapping[str, str] = dataclasses.field(default_factory=dict)
    family: str = ""
    required: bool = False


@dataclasses.dataclass
class Encoded:
    """A chunk of examples as arrays of fixed shape `[rows, ...]`, and what its metrics compare
    predictions with (task-specific: gold spans, answers, numbers, target texts)."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    references: Any = None
    #: What encoding cut to fit the static shapes, by kind (e.g. `{"sentences": 2}`).
    cut: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))


def bad_row(field: str, where: str, what: str) -> TrainerError:
    """The error of a malformed data row: `field: file:line: what is wrong` (exit code 3).

    >>> error = bad_row("data.train", "a.csv:3", "missing field(s) ['label']")
    >>> error.code, str(error)
    (<ExitCode.DATA_INVALID: 3>, "data.train: a.csv:3: missing field(s) ['label']")
    """
    return TrainerError(ExitCode.DATA_INVALID, f"{field}: {where}: {what}")


def label_loss(logits: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Cross-entropy of one label per example `[batch]` over `logits` `[batch, classes]`, and
    how many argmaxes are right (`correct`, `count`)."""
    logits = tf.cast(logits, tf.float32)
    per_example = keras.losses.sparse_categorical_crossentropy(label, logits, from_logits=True)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), label), tf.float32)
    return per_example, {
        "correct": tf.reduce_sum(hits),
        "count": tf.cast(tf.size(label), tf.float32),
    }


def positions_loss(
    logits: tf.Tensor, ids: tf.Tensor, weights: tf.Tensor
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Per example, the mean cross-entropy over its positions of weight 1 (`ids`, `weights`
    `[batch, positions]`: masked tokens, target tokens, first pieces of words), and how many of
    those argmaxes are right (`correct`, `count`)."""
    logits = tf.cast(logits, tf.float32)
    ce = keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)
    per_example = tf.reduce_sum(ce * weights, -1) / tf.maximum(tf.reduce_sum(weights, -1), 1)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ids), tf.float32)
    return per_example, {"correct": tf.reduce_sum(hits * weights), "count": tf.reduce_sum(weights)}


class BertTask:
    """A task of the trainer (see the module docstring)."""

    #: The config's `task` this class trains.
    name: ClassVar[Task]
    #: Data formats the task reads (the first is the documented default).
    formats: ClassVar[tuple[DataFormat, ...]] = ()
    #: Its heads; the first is checkpointed as "head".
    heads: ClassVar[tuple[Head, ...]] = ()
    #: Whether the heads read the pooled output (else the pooler is not trained).
    pooled: bool = False
    #: The transformers class of the Hugging Face export.
    architecture: str = ""
    #: What the task calls a label, in errors ("tag" for token classification).
    label_word: str = "label"

    def __init__(self, cfg: TrainerConfig, encoder: ExampleEncoder) -> None:
        self.cfg = cfg
        self.encoder = encoder
        #: Label names (learned from data.train, or given), if the task has labels.
        self.labels: list[str] | None = None
        self.train_files: list[str] = []
        self.validation_files: list[str] = []
        #: Bad data met inside the input pipeline, which reaches the runner as a TF error
        #: without its exit code: the runner raises this instead.
        self.failure: TrainerError | None = None

    @property
    def head(self) -> Head:
        return self.heads[0]

    # --- data ----------------------------------------------------------------------------------

    def prepare(self, train: list[str], validation: list[str]) -> None:
        """Check the data files before training (bad input fails now, not at step N) and learn
        what the model needs from them (label names)."""
        if self.cfg.data.format not in self.formats:
            raise TrainerError(
                ExitCode.CONFIG_INVALID,
                f"data.format: {self.name} reads {', '.join(map(str, self.formats))}",
            )
        self.train_files, self.validation_files = train, validation

    def dataset(self, batch_size: int, shard: tuple[int, int], skip: int = 0) -> tf.data.Dataset:
        """Training batches `(features, labels)` of input pipeline `shard` (index, count),
        forever, shuffled, the first `skip` examples skipped (a resume)."""
        raise NotImplementedError

    def describe_shard(self, shard: tuple[int, int]) -> str:
        """How this pipeline is sharded, for the start-up log (tests check shards are disjoint)."""
        index, count = shard
        files = len(self.train_files)
        return f"DATA shard {index}/{count} (every {count}th example of {files} file(s))"

    def relayed(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, keeping a data error met on the way as `failure` (inside tf.data it reaches
        the runner as a TF error without its exit code)."""
        try:
            yield from items
        except TrainerError as err:
            self.failure = err
            raise

    def shuffled(self, ds: tf.data.Dataset, skip: int) -> tf.data.Dataset:
        return ds.shuffle(4096, seed=self.cfg.training.seed, reshuffle_each_iteration=True).skip(
            skip
        )

    # --- model ---------------------------------------------------------------------------------

    def build(self, backbone: keras.Model) -> keras.Model:
        """The task model: `backbone` and the heads, named dict inputs and outputs."""
        raise NotImplementedError

    def loss(
        self, outputs: dict[str, tf.Tensor], labels: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Per-example loss and the `train_step.STATS` counts it has (correct/count)."""
        raise NotImplementedError

    def trainable_variables(self, model: keras.Model) -> list:
        """What the step trains: all but the pooler when no head reads it."""
        if self.pooled:
            return model.trainable_variables
        pooler = {id(v) for v in model.get_layer("bert").get_layer("pooled_dense").weights}
        return [v for v in model.trainable_variables if id(v) not in pooler]

    # --- validation ----------------------------------------------------------------------------

    def evaluate(self, model: keras.Model, batch_size: int) -> dict[str, float]:
        """Loss, accuracies and the task's metrics over the validation split, in one pass
        (without the validation_ prefix)."""
        raise NotImplementedError

    # --- export --------------------------------------------------------------------------------

    def serve(self, model: keras.Model, archive: keras.export.ExportArchive) -> None:
        """Add the `serving_default` endpoint (raw strings in) to the export `archive`."""
        raise NotImplementedError

    @classmethod
    def prediction(cls, text: str, out: dict[str, np.ndarray]) -> dict[str, Any]:
        """One example's served outputs `out` as JSON for `berth-trainer predict` (`text`: the
        input as given); lists padded to the batch's longest (`entity_*` beside
        `entity_count`) are cut to this example's count."""
        row = {"input": text, **{k: _plain(v) for k, v in sorted(out.items())}}
        for count in [k for k in row if k.endswith("_count")]:
            prefix, n = count.removesuffix("count"), int(row[count])
            row |= {k: row[k][:n] for k in row if k.startswith(prefix) and k != count}
        return row

    def huggingface_config(self) -> dict[str, Any]:
        """What the task adds to the Hugging Face config.json (label names)."""
        if not self.labels:
            return {}
        return {
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }


def _plain(value: Any) -> Any:
    """A served output of one example as JSON: strings decoded, floats to 4 places.

    >>> _plain(np.array([b"LOC", b"PER"])), _plain(np.float32(0.123456)), _plain(np.int32(3))
    (['LOC', 'PER'], 0.1235, 3)
    """
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.floating | float):
        return round(float(value), 4)
    return value.item() if isinstance(value, np.generic) else value


class Totals:
    """Sums of a validation pass: the loss over examples and the `STATS` counts."""

    def __init__(self) -> None:
        self.values = np.zeros(len(STATS) + 2)

    def add(self, vector: np.ndarray) -> None:
        self.values += vector

    def metrics(self) -> dict[str, float]:
        sums = dict(zip(STATS, self.values[2:].tolist(), strict=True))
        return {"loss": self.values[0] / max(self.values[1], 1), **rates(sums)}


def batch_totals(task: BertTask, model: keras.Model):
    """A `tf.function(features, labels) -> (outputs, [loss sum, examples, *STATS])`."""

    @tf.function(reduce_retracing=True)
    def run(features, labels):
        outputs = model(features, training=False)
        per_example, stats = step_stats(task, outputs, features, labels)
        size = tf.cast(tf.size(per_example), tf.float32)
        return outputs, tf.concat([[tf.reduce_sum(per_example), size], stats], 0)

    return run


class ExampleTask(BertTask):
    """A task whose data is a stream of examples (rows, sentences, questions), parsed lazily
    and encoded `CHUNK` at a time: training starts after the first chunk and memory does not
    grow with a split's size. Subclasses say how to read (`examples`), what labels an example
    uses (`labels_of`, `name_labels`), how to encode a chunk (`encode`) and how to score one
    (`score`, reduced by `metrics`)."""

    def __init__(self, cfg: TrainerConfig, encoder: ExampleEncoder) -> None:
        super().__init__(cfg, encoder)
        self._cut_logged: set[str] = set()

    def examples(self, files: list[str], field: str) -> Iterator[Any]:
        """The examples of `files`, in order, parsed lazily (a malformed one is a `bad_row`)."""
        raise NotImplementedError

    def labels_of(self, example: Any) -> Iterable[tuple[str, str]]:
        """(label name, `file:line`) of each label `example` uses (none: no label names)."""
        return ()

    def name_labels(self, seen: set[str]) -> list[str] | None:
        """The label names, from those the training split uses."""
        return None

    def encode(self, examples: list[Any], field: str) -> Encoded:
        """A chunk of examples → arrays (rows may be more than examples, e.g. QA windows)."""
        raise NotImplementedError

    def cut_message(self, cut: dict[str, int], examples: int) -> str:
        """What `encode` cut of `examples` examples (its `Encoded.cut`), for the log."""
        return f"cut {cut} of {examples} examples"

    def score(self, model: keras.Model, encoded: Encoded, outputs: dict[str, np.ndarray]) -> Any:
        """What `metrics` needs of one validation chunk, given the model's `outputs`."""
        return None

    def metrics(self, scores: list[Any]) -> dict[str, float]:
        """The task's validation metrics from every chunk's `score`."""
        return {}

    # --- what the trainer calls ----------------------------------------------------------------

    def prepare(self, train: list[str], validation: list[str]) -> None:
        super().prepare(train, validation)
        seen: set[str] = set()
        if not self._scan(train, "data.train", lambda name, where: seen.add(name)):
            raise no_examples("data.train", train)
        self.labels = self.name_labels(seen)
        known = set(self.labels or ())

        def check(name: str, where: str) -> None:
            if name not in known:
                raise bad_row(
                    "data.validation",
                    where,
                    f"{self.label_word} {name!r} does not occur in data.train",
                )

        if validation and not self._scan(validation, "data.validation", check):
            raise no_examples("data.validation", validation)

    def _scan(self, files: list[str], field: str, label) -> int:
        """Parse every example of `files` (no encoding), passing each label to `label`."""
        count = 0
        for count, example in enumerate(self.examples(files, field), 1):  # noqa: B007
            for name, where in self.labels_of(example):
                label(name, where)
        return count

    def chunks(self, files: list[str], field: str, shard: tuple[int, int] = (0, 1)):
        """Encoded chunks of this pipeline's share of `files` (every count-th example). The
        first chunk of a split that `encode` had to cut logs one warning (`cut_message`)."""
        index, count = shard
        mine = itertools.islice(self.examples(files, field), index, None, count)
        while chunk := list(itertools.islice(mine, CHUNK)):
            encoded = self.encode(chunk, field)
            if any(encoded.cut.values()) and field not in self._cut_logged:
                self._cut_logged.add(field)
                log.warning(
                    f"{field}: {self.cut_message(encoded.cut, len(chunk))} (in one chunk of "
                    "the split; logged once)",
                    extra={"fields": {f"cut_{k}": v for k, v in encoded.cut.items()}},
                )
            yield encoded

    def dataset(self, batch_size: int, shard: tuple[int, int], skip: int = 0) -> tf.data.Dataset:
        first = next(self.chunks(self.train_files, "data.train"))
        spec = tf.nest.map_structure(
            lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype)),
            (first.features, first.labels),
        )

        def arrays():
            def encode_forever():
                while True:  # epochs
                    for encoded in self.chunks(self.train_files, "data.train", shard):
                        yield encoded.features, encoded.labels

            yield from self.relayed(ahead(encode_forever(), name="encode"))

        ds = tf.data.Dataset.from_generator(arrays, output_signature=spec).unbatch()
        return self.shuffled(ds, skip).batch(batch_size, drop_remainder=True).prefetch(2)

    def evaluate(self, model: keras.Model, batch_size: int) -> dict[str, float]:
        run = batch_totals(self, model)
        totals, scores = Totals(), []
        for encoded in self.chunks(self.validation_files, "data.validation"):
            parts: dict[str, list[np.ndarray]] = {}
            for start in range(0, len(encoded), batch_size):
                cut = slice(start, start + batch_size)
                outputs, sums = run(
                    {k: v[cut] for k, v in encoded.features.items()},
                    {k: v[cut] for k, v in encoded.labels.items()},
                )
                totals.add(sums.numpy())
                for k, v in outputs.items():
                    parts.setdefault(k, []).append(v.numpy())
            outputs = {k: np.concatenate(v) for k, v in parts.items()}
            scores.append(self.score(model, encoded, outputs))
        return totals.metrics() | self.metrics(scores)
