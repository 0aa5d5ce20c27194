"""Pre-training as the reference implementations do it, through the real CLI: a tiny model
learns sentence-order prediction above chance; next-sentence prediction with whole-word masking
trains and exports a BertForPreTraining; `prepare` writes packed, sharded records that train;
Chinese whole-word masking (jieba) prepares and trains."""

from __future__ import annotations

import json
import random

import pytest
import tensorflow as tf
from trainer_testlib import json_lines, pretraining_config, task_of, train_args, write_config

from berth_trainer.cli import main
from berth_trainer.corpus.records import PACKED_FEATURES


def _train(tmp_path, cfg: dict, capsys) -> tuple[list[dict], dict]:
    code = main(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    lines = json_lines(capsys.readouterr().out)
    assert code == 0, lines[-3:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    return [x for x in lines if x["msg"] == "train step"], metrics


def _ordered_corpus(path, documents: int, seed: int) -> str:
    """Two-sentence documents, "good good …" then "bad bad …": the order is visible, and
    masked-LM is easy, so it does not drown the sentence objective in a short run (with the
    grammar corpus's sentences, a tiny model beside masked-LM was still at chance after 400
    steps; alone, sentence order took it ~80)."""
    rng = random.Random(seed)
    docs = [
        " ".join(["good"] * rng.randint(3, 8)) + "\n" + " ".join(["bad"] * rng.randint(3, 8))
        for _ in range(documents)
    ]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_trainer_learns_sentence_order_above_chance(tmp_path, corpus, capsys):
    cfg = pretraining_config(corpus, tmp_path, steps=200, sequenceLength=32)
    cfg["data"] = {
        "train": _ordered_corpus(tmp_path / "train.txt", 400, 0),
        "validation": _ordered_corpus(tmp_path / "valid.txt", 100, 1),
    }
    cfg["pretraining"] = {"packing": "segmentPairs", "sentencePrediction": "sentenceOrder"}
    steps, metrics = _train(tmp_path, cfg, capsys)
    assert {"sentence_accuracy", "non_padding_fraction", "tokens_per_second"} <= set(steps[-1])
    assert metrics["validation_sentence_accuracy"] >= 0.8, metrics
    assert metrics["validation_sentence_accuracy"] > metrics["initial_validation_sentence_accuracy"]


@pytest.mark.slow
def test_trainer_next_sentence_with_whole_word_masking_exports_for_pretraining(
    tmp_path, corpus, capsys
):
    cfg = pretraining_config(corpus, tmp_path, steps=10)
    cfg["pretraining"] = {
        "packing": "segmentPairs",
        "sentencePrediction": "nextSentence",
        "wholeWordMasking": "wordPiece",
    }
    steps, metrics = _train(tmp_path, cfg, capsys)
    assert 0 <= steps[-1]["sentence_accuracy"] <= 1 and metrics["steps"] == 10
    hf = json.loads((tmp_path / "out" / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForPreTraining"]


@pytest.mark.slow
def test_trainer_prepare_writes_packed_shards_that_train(tmp_path, corpus, capsys):
    record = str(tmp_path / "corpus.tfrecord")
    args = ["prepare", "--vocabulary", corpus["vocab"], "--input", corpus["corpus"]]
    args += ["--output", record, "--sequence-length", "16", "--shards", "2"]
    assert main(args) == 0
    (done,) = [x for x in json_lines(capsys.readouterr().out) if x["msg"].startswith("wrote")]
    assert done["shards"] == 2 and done["non_padding_fraction"] >= 0.95, done
    files = sorted(str(p) for p in tmp_path.glob("corpus.tfrecord-*-of-00002"))
    assert len(files) == 2
    counts = [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in files]
    assert sum(counts) == done["examples"] and abs(counts[0] - counts[1]) <= 1
    first = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(files[0]))).numpy())
    assert set(first.features.feature) == set(PACKED_FEATURES)

    cfg = pretraining_config(corpus, tmp_path, steps=10)
    cfg["data"] = {"train": str(tmp_path / "corpus.tfrecord-*"), "format": "tfrecord"}
    task = task_of(cfg, prepare=True)
    shards = [task.describe_shard((i, 2)) for i in range(2)]
    assert shards == [f"FILE shard {i}/2: {[files[i]]}" for i in range(2)]  # disjoint
    _, metrics = _train(tmp_path, cfg, capsys)
    assert metrics["steps"] == 10

    cfg["training"]["sequenceLength"] = 24
    code = main(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    assert code == 3 and "--sequence-length 24" in (tmp_path / "term").read_text()


@pytest.mark.slow
def test_trainer_chinese_whole_word_masking_prepares_and_trains(tmp_path, corpus, capsys):
    lines = ["我爱北京天安门", "今天天气很好", "我们一起学习中文", "北京是中国的首都"]
    rng = random.Random(0)
    docs = ["\n".join(rng.choice(lines) for _ in range(rng.randint(3, 5))) for _ in range(60)]
    (tmp_path / "zh.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    chars = sorted({c for line in lines for c in line})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (tmp_path / "vocab.txt").write_text("\n".join(specials + chars) + "\n", encoding="utf-8")
    record = str(tmp_path / "zh.tfrecord")
    args = ["prepare", "--vocabulary", str(tmp_path / "vocab.txt"), "--input"]
    args += [str(tmp_path / "zh.txt"), "--output", record, "--sequence-length", "16"]
    assert main([*args, "--whole-word-masking", "chinese"]) == 0
    capsys.readouterr()
    example = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(record))).numpy())
    starts = example.features.feature["word_starts"].int64_list.value
    assert 0 in starts  # jieba joined characters into words

    cfg = pretraining_config(corpus, tmp_path, steps=10)
    cfg["vocabulary"] = str(tmp_path / "vocab.txt")
    cfg["data"] = {"train": str(tmp_path / "zh.txt")}
    cfg["pretraining"] = {"wholeWordMasking": "chinese"}
    steps, metrics = _train(tmp_path, cfg, capsys)
    assert metrics["steps"] == 10 and steps[-1]["non_padding_fraction"] > 0.95
