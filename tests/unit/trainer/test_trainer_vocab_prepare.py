"""`berth-trainer vocab` and `prepare`, then training from the pre-tokenized tfrecord."""

from __future__ import annotations

import json

import pytest
from trainer_testlib import json_lines, pretraining_config, train_args, write_config

from berth_trainer.cli import main
from berth_trainer.vocab import SPECIAL_TOKENS, load_vocabulary, make_tokenizer


@pytest.mark.slow
def test_trainer_vocab_prepare_then_train_on_tfrecord(tmp_path, corpus, capsys):
    vocab = str(tmp_path / "vocab.txt")
    assert main(["vocab", "--input", corpus["corpus"], "--output", vocab, "--size", "200"]) == 0
    tokens = load_vocabulary(vocab)
    assert tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS) and "cat" in tokens

    record = str(tmp_path / "corpus.tfrecord")
    prepare = ["prepare", "--vocabulary", vocab, "--input", corpus["corpus"], "--output", record]
    assert main([*prepare, "--sequence-length", "16"]) == 0
    capsys.readouterr()
    cfg = pretraining_config(corpus, tmp_path, steps=10)
    cfg["vocabulary"] = vocab
    cfg["model"]["maxSequenceLength"] = 32
    cfg["data"] = {"train": record, "format": "tfrecord"}
    code = main(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    lines = json_lines(capsys.readouterr().out)
    assert code == 0, lines[-3:]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 10


def test_trainer_google_format_vocab_with_chinese(tmp_path):
    (tmp_path / "vocab.txt").write_text(
        "\n".join([*SPECIAL_TOKENS, "我", "爱", "北", "京", "the", "##s"]) + "\n", encoding="utf-8"
    )
    tokenizer = make_tokenizer(load_vocabulary(str(tmp_path / "vocab.txt")))
    ids = [int(i) for i in tokenizer("我爱北京 [MASK] thes")]
    assert ids == [5, 6, 7, 8, 4, 9, 10]
