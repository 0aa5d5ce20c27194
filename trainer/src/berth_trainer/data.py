"""What every task's input shares: the data files a config names, and the encoder of raw text
into the model's fixed-length features (each task builds its own pipeline on them: `tasks/`).

Every pipeline ends in `batch(drop_remainder=True)`, so each batch has the fixed shape the
compiled step expects. Sharding across workers is explicit: by FILE when there are at least as
many files as input pipelines (a pre-training corpus), by DATA (every n-th example, or for a
pre-training text corpus every n-th document) otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import keras_hub
import numpy as np
import tensorflow as tf

from berth_trainer.config import TrainerConfig
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.packing import Specials
from berth_trainer.vocab import make_tokenizer, ragged_ids

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


class ExampleEncoder:
    """Raw text → the model's fixed-length features: the tokenizer, the special tokens and the
    packer every task shares."""

    def __init__(self, cfg: TrainerConfig, vocabulary: list[str]) -> None:
        t = cfg.training
        self.sequence_length = t.sequence_length
        self.vocabulary = vocabulary
        self.tokenizer = make_tokenizer(vocabulary)
        #: Python strings → flat ids and row splits (pre-training's documents).
        self.ids = ragged_ids(self.tokenizer)
        ids = {tok: i for i, tok in enumerate(vocabulary)}
        self.pad_id, self.mask_id = ids["[PAD]"], ids["[MASK]"]
        self.specials = Specials.of(vocabulary)
        self.special_ids = list(dataclasses.astuple(self.specials))
        self.packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=t.sequence_length,
            start_value=ids["[CLS]"],
            end_value=ids["[SEP]"],
            pad_value=self.pad_id,
        )
        self._compiled: dict[int, Callable] = {}  # segments → `encode_texts` as a graph

    def encode_strings(self, *columns: list[str]) -> dict[str, np.ndarray]:
        """`encode_texts` of Python strings (one list per segment), in one graph per number of
        segments: what a task's `encode` calls on a chunk."""
        if len(columns) not in self._compiled:
            spec = [tf.TensorSpec([None], tf.string)] * len(columns)
            self._compiled[len(columns)] = tf.function(self.encode_texts, input_signature=spec)
        packed = self._compiled[len(columns)](*(tf.constant(c, tf.string) for c in columns))
        return {k: v.numpy() for k, v in packed.items()}

    def encode_texts(self, *texts: tf.Tensor) -> Features:
        """Raw strings `[batch]` (one tensor per segment) → a batch of packed features; what
        classification, regression and multiple choice train on and what their exports serve."""
        token_ids, segment_ids = self.packer(
            tuple(self.tokenizer(x) for x in texts) if len(texts) > 1 else self.tokenizer(texts[0])
        )
        token_ids = tf.cast(token_ids, tf.int32)
        return {
            "token_ids": token_ids,
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(tf.not_equal(token_ids, self.pad_id), tf.int32),
        }
