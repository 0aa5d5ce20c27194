"""The packed pre-training examples `berth-trainer prepare` writes: TFRecord files of
`tf.train.Example`s with the int64 features `PACKED_FEATURES`."""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from google.protobuf import message

from berth_trainer.config import TrainerConfig
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

#: Features of a packed pre-training example (`berth-trainer prepare` writes them as int64).
PACKED_FEATURES = ("token_ids", "segment_ids", "word_starts", "sentence_label")


def first_example(path: str, field: str):
    """The features of the first record of `path`; a data error if it has none or is not a
    TFRecord file of `tf.train.Example`s."""
    try:
        first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
        if first is None:
            raise TrainerError(ExitCode.DATA_INVALID, f"{field}: no records in {path}")
        return tf.train.Example.FromString(first.numpy()).features.feature
    except (tf.errors.DataLossError, message.DecodeError) as err:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} is not a TFRecord file of tf.train.Example ({err})",
        ) from err


def check_records(path: str, cfg: TrainerConfig, field: str) -> None:
    """The first record of `path` must be a packed example of training.sequenceLength."""
    example = first_example(path, field)
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


def parse_packed(sequence_length: int):
    spec = {k: tf.io.FixedLenFeature([sequence_length], tf.int64) for k in PACKED_FEATURES[:3]}
    spec["sentence_label"] = tf.io.FixedLenFeature([], tf.int64)

    def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            k: tf.cast(v, tf.int32) for k, v in tf.io.parse_single_example(record, spec).items()
        }

    return parse


def serialize(examples: list, pad: int) -> tuple[list[bytes], int]:
    """Packed examples as serialized `tf.train.Example`s, and their non-padding tokens.

    The protobuf bytes are written directly, a batch at a time: the ids of all the examples
    are varint-encoded in one numpy pass (10x faster than building a message per example).
    """
    columns = {k: np.stack([np.atleast_1d(getattr(e, k)) for e in examples]) for k in _NAMES}
    encoded = {k: _varint_rows(v) for k, v in columns.items()}
    records = [
        _field(1, b"".join(_feature(name, encoded[k][r]) for k, name in _NAMES.items()))
        for r in range(len(examples))
    ]
    return records, int(np.count_nonzero(columns["token_ids"] != pad))


_NAMES = {k: k.encode() for k in PACKED_FEATURES}


def _feature(name: bytes, values: bytes) -> bytes:
    """A `Features.feature` map entry: name → Feature{int64_list: Int64List{packed values}}."""
    return _feature_head(name, len(values)) + values


@functools.cache
def _feature_head(name: bytes, size: int) -> bytes:
    """The bytes of a feature entry before its `size` bytes of values (the same for every
    example of a length)."""
    entry = _field(1, _field(1, name) + _field(2, _field(3, _field(1, b"\0" * size))))
    return entry[:-size] if size else entry


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([number << 3 | 2]) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _varint_rows(values: np.ndarray) -> list[bytes]:
    """Each row of non-negative integers as packed protobuf varints.

    >>> _varint_rows(np.array([[1, 300], [0, 2]])) == [bytes([1, 0xAC, 0x02]), bytes([0, 2])]
    True
    """
    v = values.astype(np.uint64)
    if int(v.max()) < 0x80:  # one byte each (0/1 features, small vocabularies)
        data = v.astype(np.uint8)
        return [row.tobytes() for row in data]
    width = (int(v.max()).bit_length() + 6) // 7
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[..., None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    used = 1 + (v[..., None] >= (np.uint64(1) << shifts[1:])).sum(-1)
    column = np.arange(width)
    groups |= np.where(column < used[..., None] - 1, 0x80, 0).astype(np.uint8)
    data = groups[column < used[..., None]].tobytes()
    ends = np.cumsum(used.sum(-1))
    return [data[a:b] for a, b in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)]
