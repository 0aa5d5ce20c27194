"""`data.format: googleTfrecord`: pre-training from the TFRecords of Google BERT's
`create_pretraining_data.py` (MLPerf BERT, NVIDIA's BERT recipes) as they are: parsed into the
model's inputs and labels unchanged (static masks), trained and validated through the real CLI,
and bad files (a missing feature, other lengths than the config's, ids beyond the vocabulary)
refused with exit 3 before training, naming the setting to change.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from trainer_testlib import json_lines, pretraining_config, task_of, train_args, write_config

from berth_trainer.cli import main
from berth_trainer.corpus.google import GOOGLE_FEATURES, parse_google
from berth_trainer.vocab import SPECIAL_TOKENS, load_vocabulary

#: The lengths the records are written with (max_seq_length, max_predictions_per_seq).
N, P = 16, 4


@dataclass
class Instance:
    """One masked sentence pair, as create_pretraining_data.py holds it before writing."""

    ids: list[int]  # [CLS] A [SEP] B [SEP], masked
    segment_ids: list[int]
    positions: list[int]  # ascending
    labels: list[int]  # the original ids at `positions`
    is_random_next: bool


def make_instances(vocabulary: list[str], count: int, seed: int) -> list[Instance]:
    """Random sentence pairs of the vocabulary's words, masked the way the script masks: up to
    P positions (15% of the tokens, at least one; never [CLS]/[SEP]), each [MASK] 80% of the
    time, a random word 10%, itself 10%; lengths vary so that some examples are padded."""
    rng = random.Random(seed)
    cls, sep, mask = (vocabulary.index(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    words = list(range(len(SPECIAL_TOKENS), len(vocabulary)))
    out = []
    for _ in range(count):
        a = [rng.choice(words) for _ in range(rng.randint(1, 6))]
        b = [rng.choice(words) for _ in range(rng.randint(1, N - 3 - len(a)))]
        ids = [cls, *a, sep, *b, sep]
        segment_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        candidates = [i for i, t in enumerate(ids) if t not in (cls, sep)]
        k = min(P, max(1, round(len(ids) * 0.15)))
        positions = sorted(rng.sample(candidates, k))
        labels = [ids[i] for i in positions]
        for i in positions:
            draw = rng.random()
            ids[i] = mask if draw < 0.8 else ids[i] if draw < 0.9 else rng.choice(words)
        out.append(Instance(ids, segment_ids, positions, labels, rng.random() < 0.5))
    return out


def write_google_records(path: Path, instances: list[Instance], drop: str = "") -> str:
    """Write `instances` in the record layout of google-research/bert's
    create_pretraining_data.py (`write_instance_to_example_files`): int64 input_ids,
    input_mask (1 per real token), segment_ids, zero-padded to N; int64 masked_lm_positions,
    masked_lm_ids and float masked_lm_weights (1.0 per prediction), zero-padded to P; int64
    next_sentence_labels (1 = B is random). `drop`: a feature left out (a bad file)."""

    def ints(values: list[int], length: int) -> tf.train.Feature:
        padded = values + [0] * (length - len(values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=padded))

    with tf.io.TFRecordWriter(str(path)) as writer:
        for inst in instances:
            weights = [1.0] * len(inst.positions) + [0.0] * (P - len(inst.positions))
            features = {
                "input_ids": ints(inst.ids, N),
                "input_mask": ints([1] * len(inst.ids), N),
                "segment_ids": ints(inst.segment_ids, N),
                "masked_lm_positions": ints(inst.positions, P),
                "masked_lm_ids": ints(inst.labels, P),
                "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(value=weights)),
                "next_sentence_labels": ints([int(inst.is_random_next)], 1),
            }
            features.pop(drop, None)
            example = tf.train.Example(features=tf.train.Features(feature=features))
            writer.write(example.SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def records(corpus, tmp_path_factory) -> dict:
    """Two training files and a validation file of written instances, and the instances."""
    vocabulary = load_vocabulary(corpus["vocab"])
    folder = tmp_path_factory.mktemp("google")
    train = make_instances(vocabulary, 48, seed=0)
    validation = make_instances(vocabulary, 16, seed=1)
    return {
        "train": [
            write_google_records(folder / f"train-{i}.tfrecord", train[i::2]) for i in range(2)
        ],
        "validation": write_google_records(folder / "validation.tfrecord", validation),
        "instances": train,
        "folder": folder,
    }


def _config(corpus, records, tmp_path: Path, **training) -> dict:
    cfg = pretraining_config(corpus, tmp_path, sequenceLength=N, maxPredictionsPerSequence=P)
    cfg["training"].update(training)
    cfg["data"] = {
        "train": str(records["folder"] / "train-*.tfrecord"),
        "validation": records["validation"],
        "format": "googleTfrecord",
    }
    cfg["pretraining"] = {"packing": "segmentPairs", "sentencePrediction": "nextSentence"}
    return cfg


@pytest.mark.parametrize("sentence_label", [True, False])
def test_parse_google_yields_the_written_instances(records, sentence_label):
    first = next(iter(tf.data.TFRecordDataset(records["train"][0]))).numpy()
    assert set(tf.train.Example.FromString(first).features.feature) == set(GOOGLE_FEATURES)
    parse = parse_google(N, P, sentence_label)
    ds = tf.data.TFRecordDataset(records["train"][0]).map(parse)
    assert ds.element_spec[0]["token_ids"].shape == [N]
    assert ds.element_spec[0]["mask_positions"].shape == [P]
    parsed = list(ds.as_numpy_iterator())
    written = records["instances"][0::2]
    assert len(parsed) == len(written)
    for (inputs, labels), inst in zip(parsed, written, strict=True):
        k, m = len(inst.ids), len(inst.positions)
        assert {v.dtype for v in inputs.values()} == {np.dtype(np.int32)}
        assert inputs["token_ids"].tolist() == inst.ids + [0] * (N - k)
        assert inputs["segment_ids"].tolist() == inst.segment_ids + [0] * (N - k)
        assert inputs["padding_mask"].tolist() == [1] * k + [0] * (N - k)
        assert inputs["mask_positions"].tolist() == inst.positions + [0] * (P - m)
        assert labels["mask_ids"].dtype == np.int32
        assert labels["mask_ids"].tolist() == inst.labels + [0] * (P - m)
        assert labels["mask_weights"].dtype == np.float32
        assert labels["mask_weights"].tolist() == [1.0] * m + [0.0] * (P - m)
        if sentence_label:
            assert labels["sentence_label"] == int(inst.is_random_next)
        else:
            assert "sentence_label" not in labels
    assert any(inst.is_random_next for inst in written)
    assert any(not inst.is_random_next for inst in written)


def test_google_records_shard_like_tfrecord(corpus, records, tmp_path):
    task = task_of(_config(corpus, records, tmp_path), prepare=True)
    files = records["train"]
    assert [task.describe_shard((i, 2)) for i in (0, 1)] == [
        f"FILE shard {i}/2: {[files[i]]}" for i in (0, 1)
    ]
    assert task.describe_shard((1, 3)) == "DATA shard 1/3 (every 3th record of 2 file(s))"
    (features, labels) = next(iter(task.dataset(4, (0, 2))))
    assert features["token_ids"].shape == [4, N] and labels["sentence_label"].shape == [4]
    # Static masks: the token ids are the records' own, not masked again.
    written = {tuple(i.ids + [0] * (N - len(i.ids))) for i in records["instances"][0::2]}
    assert {tuple(row) for row in features["token_ids"].numpy().tolist()} <= written


@pytest.mark.slow
def test_trainer_trains_on_google_records_and_reports_mlm_accuracy(
    corpus, records, tmp_path, capsys
):
    cfg = _config(corpus, records, tmp_path, steps=2, logEverySteps=1, warmupSteps=1)
    code = main(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    lines = json_lines(capsys.readouterr().out)
    assert code == 0, lines[-3:]
    steps = [x for x in lines if x["msg"] == "train step"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss"]) for s in steps), steps
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 <= metrics["validation_accuracy"] <= 1, metrics
    assert 0 <= metrics["validation_sentence_accuracy"] <= 1, metrics
    assert math.isfinite(metrics["validation_loss"]), metrics


@pytest.mark.parametrize(
    ("drop", "training", "token_id", "expected"),
    [
        ("masked_lm_weights", {}, None, ["masked_lm_weights", "googleTfrecord"]),
        ("input_ids", {}, None, ["input_ids", "data.format tfrecord"]),
        ("", {"sequenceLength": 24}, None, ["input_ids", "training.sequenceLength: 16"]),
        ("", {"maxPredictionsPerSequence": 5}, None, ["training.maxPredictionsPerSequence: 4"]),
        ("", {}, 30522, ["token id 30522", "--vocab_file"]),  # BERT-base's vocabulary
    ],
)
def test_trainer_refuses_bad_google_records_with_exit_3(
    corpus, records, tmp_path, capsys, drop, training, token_id, expected
):
    bad = make_instances(load_vocabulary(corpus["vocab"]), 2, seed=2)
    if token_id is not None:
        bad[0].ids[1] = token_id
    cfg = _config(corpus, records, tmp_path, **training)
    cfg["data"]["train"] = write_google_records(tmp_path / "bad.tfrecord", bad, drop)
    code = main(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    capsys.readouterr()
    message = (tmp_path / "term").read_text()
    assert code == 3, message
    assert message.startswith("data.train: ") and str(tmp_path / "bad.tfrecord") in message
    for text in expected:
        assert text in message, message
