"""Pre-training TFRecords of Google BERT's `create_pretraining_data.py` (`data.format:
googleTfrecord`): the format of the MLPerf BERT Wikipedia dataset and of NVIDIA's BERT
recipes, so their users train on the records they have, without preparing them again.

Each record is a `tf.train.Example` of one already masked sentence pair: `input_ids`,
`input_mask`, `segment_ids` (max_seq_length int64 each, zero-padded), `masked_lm_positions`,
`masked_lm_ids` (max_predictions_per_seq int64 each, zero-padded), `masked_lm_weights`
(max_predictions_per_seq floats, 1.0 for a prediction, 0.0 for padding) and
`next_sentence_labels` (one int64: 1 when B is a random sentence). The masks were drawn when
the records were written, so they stay the same every epoch (static masking).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from berth_trainer.config import TrainerConfig
from berth_trainer.corpus.records import first_example
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

#: Features of a record, as `create_pretraining_data.py` names them.
GOOGLE_FEATURES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)
_PER_TOKEN = GOOGLE_FEATURES[:3]
_PER_PREDICTION = GOOGLE_FEATURES[3:6]
#: How the records' flags name the lengths our settings must match.
_WRITTEN_WITH = {
    "training.sequenceLength": "--max_seq_length",
    "training.maxPredictionsPerSequence": "--max_predictions_per_seq",
}


def check_google_records(
    path: str, cfg: TrainerConfig, field: str, vocabulary_size: int | None = None
) -> None:
    """The first record of `path` must be a `create_pretraining_data.py` example of
    training.sequenceLength tokens and training.maxPredictionsPerSequence predictions (and,
    given `vocabulary_size`, ids inside the vocabulary); a mismatch fails now (exit 3), not as
    a shape error at the first step."""
    example = first_example(path, field)
    absent = [k for k in GOOGLE_FEATURES if k not in example]
    if absent:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} is not a Google BERT pre-training file (no features {absent}); "
            "data.format googleTfrecord reads the records of create_pretraining_data.py "
            f"({', '.join(GOOGLE_FEATURES)}); for `berth-trainer prepare` output use "
            "data.format tfrecord",
        )
    wrong_kind = [k for k in GOOGLE_FEATURES if example[k].WhichOneof("kind") != _kind(k)]
    if wrong_kind:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path}: features {wrong_kind} are not of the type create_pretraining_data"
            ".py writes (masked_lm_weights floats, the others int64); write the records with it",
        )
    t = cfg.training
    for names, setting, want in (
        (_PER_TOKEN, "training.sequenceLength", t.sequence_length),
        (_PER_PREDICTION, "training.maxPredictionsPerSequence", t.max_predictions_per_sequence),
    ):
        lengths = {k: len(getattr(example[k], _kind(k)).value) for k in names}
        if lengths[names[0]] != want:
            have = lengths[names[0]]
            raise TrainerError(
                ExitCode.DATA_INVALID,
                f"{field}: {path} has {names[0]} of length {have} but {setting} is {want}; set "
                f"{setting}: {have} (the {_WRITTEN_WITH[setting]} the records were written "
                f"with) or write them again with {_WRITTEN_WITH[setting]} {want}",
            )
        uneven = [k for k, n in lengths.items() if n != want]
        if uneven:
            raise TrainerError(
                ExitCode.DATA_INVALID,
                f"{field}: {path}: features {uneven} are not {want} long like {names[0]}; "
                "write the records again with create_pretraining_data.py",
            )
    ids = [*example["input_ids"].int64_list.value, *example["masked_lm_ids"].int64_list.value]
    if vocabulary_size is not None and max(ids) >= vocabulary_size:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} holds token id {max(ids)} but the vocabulary has "
            f"{vocabulary_size} tokens; set vocabulary to the vocab file the records were "
            "written with (--vocab_file)",
        )


def _kind(name: str) -> str:
    return "float_list" if name == "masked_lm_weights" else "int64_list"


def parse_google(
    sequence_length: int, max_predictions: int, sentence_label: bool = True
) -> Callable[[tf.Tensor], tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]]:
    """A function record -> (inputs, labels) of the structure `Pretraining.masked` returns:
    inputs token_ids, segment_ids, padding_mask, mask_positions (int32, static shapes);
    labels mask_ids (int32), mask_weights (float32) and, with `sentence_label`, sentence_label
    from next_sentence_labels (1 = B is random, as our nextSentence labels it)."""
    n, p = sequence_length, max_predictions
    spec = {k: tf.io.FixedLenFeature([n], tf.int64) for k in _PER_TOKEN}
    spec["masked_lm_positions"] = tf.io.FixedLenFeature([p], tf.int64)
    spec["masked_lm_ids"] = tf.io.FixedLenFeature([p], tf.int64)
    spec["masked_lm_weights"] = tf.io.FixedLenFeature([p], tf.float32)
    if sentence_label:
        spec["next_sentence_labels"] = tf.io.FixedLenFeature([1], tf.int64)

    def parse(record: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        f = tf.io.parse_single_example(record, spec)
        inputs = {
            "token_ids": tf.cast(f["input_ids"], tf.int32),
            "segment_ids": tf.cast(f["segment_ids"], tf.int32),
            "padding_mask": tf.cast(f["input_mask"], tf.int32),
            "mask_positions": tf.cast(f["masked_lm_positions"], tf.int32),
        }
        labels = {
            "mask_ids": tf.cast(f["masked_lm_ids"], tf.int32),
            "mask_weights": f["masked_lm_weights"],
        }
        if sentence_label:
            labels["sentence_label"] = tf.cast(f["next_sentence_labels"][0], tf.int32)
        return inputs, labels

    return parse
