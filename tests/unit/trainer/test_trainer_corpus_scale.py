"""Pre-training data at corpus scale (`berth_trainer.corpus`): byte-range slices that together
read every document exactly once, whatever the line endings and blank lines; N prepare workers
whose shards hold every input token exactly once; memory that stays flat as the corpus grows;
a worker killed mid-shard that leaves nothing a training reads, and `data.prepare` end to end
(rerun, skip, the shards a training gets, stale input refused).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from trainer_testlib import pretraining_config, train_args, write_config

from berth_trainer import synthetic
from berth_trainer.cli import main
from berth_trainer.config import PretrainingConfig, load_trainer_config
from berth_trainer.corpus import prepare
from berth_trainer.corpus.documents import Tokenize, read_documents, read_part, slice_parts
from berth_trainer.errors import TrainerError
from berth_trainer.vocab import load_vocabulary, make_tokenizer, ragged_ids

# --- slices: pure reading, no tokenizer ---------------------------------------------------------


def _random_corpus(rng: random.Random, documents: int) -> tuple[bytes, list[list[str]]]:
    """A file's bytes and its documents, with every oddity a reader meets: CRLF, blank lines
    of spaces/tabs/U+3000, runs of blank lines, lines longer than a read-back block, a BOM,
    no final newline."""
    docs, out = [], []
    for d in range(documents):
        lines = []
        for k in range(rng.randint(1, 6)):
            words = rng.randint(1, 2000 if rng.random() < 0.05 else 12)
            lines.append(" ".join(f"w{d}x{k}y{j}" for j in range(words)))
        docs.append(lines)
        eol = "\r\n" if rng.random() < 0.3 else "\n"
        out.append(eol.join(lines) + eol)
        if d < documents - 1:
            blank = rng.choice(["", " ", "\t", "\u3000", "  \r"])
            out.append((blank + eol) * rng.randint(1, 3))
    text = "".join(out)
    if rng.random() < 0.3:
        text = text.rstrip("\r\n")
    data = text.encode("utf-8")
    if rng.random() < 0.3:
        data = b"\xef\xbb\xbf" + data
    return data, docs


@pytest.mark.parametrize("seed", range(6))
def test_slices_read_every_document_exactly_once(tmp_path, seed):
    rng = random.Random(seed)
    paths, expected = [], []
    for f in range(rng.randint(1, 3)):
        data, docs = _random_corpus(rng, rng.randint(1, 40))
        (tmp_path / f"{f}.txt").write_bytes(data)
        paths.append(str(tmp_path / f"{f}.txt"))
        expected += docs
    for count in (1, 2, 3, 5, 8, 13):
        slices = [
            list(read_documents(slice_parts(paths, i, count), "data.train")) for i in range(count)
        ]
        assert [doc for s in slices for doc in s] == expected, count
        sizes = [sum(p.size for p in slice_parts(paths, i, count)) for i in range(count)]
        assert sum(sizes) == sum(os.path.getsize(p) for p in paths)
        assert max(sizes) - min(sizes) <= len(paths), sizes  # bytes split evenly


def test_progress_counts_each_byte_of_a_slice_once(tmp_path):
    data, _ = _random_corpus(random.Random(7), 30)
    (tmp_path / "a.txt").write_bytes(data)
    done: list[int] = []
    for part in slice_parts([str(tmp_path / "a.txt")], 1, 3):
        list(read_part(part, "data.train", done.append))
        assert sum(done) == part.size


def test_a_bad_byte_deep_in_a_later_slice_names_its_file_and_line(tmp_path):
    lines = [f"line {i}" + ("\n" if i % 4 else "\n\n") for i in range(1, 400)]
    lines[300] = "caf\xe9 au lait\n"
    (tmp_path / "a.txt").write_bytes("".join(lines).encode("latin-1"))
    number = "".join(lines[:300]).count("\n") + 1
    with pytest.raises(TrainerError) as err:
        for i in range(3):
            list(read_documents(slice_parts([str(tmp_path / "a.txt")], i, 3), "data.train"))
    assert err.value.code == 3
    assert str(err.value).startswith(f"data.train: {tmp_path / 'a.txt'}:{number}: not UTF-8")


def test_prepare_of_a_corpus_without_text_fails_with_exit_3(tmp_path, corpus):
    (tmp_path / "blank.txt").write_text(" \n\n\t\n", encoding="utf-8")
    args = ["prepare", "--vocabulary", corpus["vocab"], "--input", str(tmp_path / "blank.txt")]
    args += ["--output", str(tmp_path / "out"), "--termination-log", str(tmp_path / "term")]
    assert main(args) == 3
    assert (tmp_path / "term").read_text().startswith("--input: no text lines in")
    assert not list(tmp_path.glob("*out*"))  # nothing written, not even an empty shard


# --- prepare: N workers, every token once ---------------------------------------------------


def _grammar_corpus(path, megabytes: float, seed: int = 0) -> str:
    """Grammar sentences, 3-10 lines a document, about `megabytes` MB (1 MB of documents
    written in a new order until the size is reached: generating is slower than reading)."""
    rng = random.Random(seed)
    documents = []
    for _ in range(1 + int(min(megabytes, 1) * 1e6) // 600):
        lines = [
            " ".join(synthetic.sentence(rng) for _ in range(rng.randint(1, 5)))
            for _ in range(rng.randint(3, 10))
        ]
        documents.append("\n".join(lines) + "\n\n")
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < megabytes * 1e6:
            rng.shuffle(documents)
            f.write("".join(documents))
    return str(path)


def _tokens(paths: list[str]) -> list[int]:
    """Non-special tokens of TFRecord shards of packed examples."""
    out: list[int] = []
    for path in paths:
        for record in tf.data.TFRecordDataset(path):
            ids = tf.train.Example.FromString(record.numpy()).features.feature["token_ids"]
            out += [i for i in ids.int64_list.value if i > 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
    return out


@pytest.mark.parametrize("packing", ["fullSentences", "docSentences"])
def test_prepare_workers_together_hold_every_input_token_once(tmp_path, corpus, packing):
    text = _grammar_corpus(tmp_path / "c.txt", 0.3)
    settings = prepare.Settings(
        corpus["vocab"], 32, PretrainingConfig(packing=packing), workers=3, shards=2
    )
    for worker in range(3):
        prepare.prepare_files(text, str(tmp_path / "out"), settings, worker)
    shards = sorted(str(p) for p in tmp_path.glob("out-*-of-00006"))
    assert len(shards) == 6 and not list(tmp_path.glob(".*partial"))
    vocabulary = load_vocabulary(corpus["vocab"])
    tokenize = Tokenize(ragged_ids(make_tokenizer(vocabulary)), vocabulary, "none")
    whole = read_documents(slice_parts([text], 0, 1), "data.train")
    expected = [int(i) for doc in tokenize(whole) for s in doc for i in s.ids if i > 4]
    got = _tokens(shards)
    assert len(got) == len(expected)
    assert collections.Counter(got) == collections.Counter(expected)


# --- processes: flat memory; a kill mid-shard; data.prepare end to end ----------------------


def _prepare_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "berth_trainer.cli", "prepare", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def _peak_rss(args: list[str]) -> int:
    """Peak resident memory (bytes) of a `prepare` process."""
    proc = _prepare_process(args)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss * 1024


@pytest.mark.slow
def test_prepare_memory_stays_flat_as_the_corpus_grows(tmp_path, corpus):
    """Before streaming, RSS grew ~8 bytes per input byte: +72 MB from 3 to 12 MB."""
    rss = {}
    for megabytes in (3, 12):
        text = _grammar_corpus(tmp_path / f"{megabytes}.txt", megabytes)
        out = str(tmp_path / f"{megabytes}.tfrecord")
        rss[megabytes] = _peak_rss(
            ["--vocabulary", corpus["vocab"], "--input", text, "--output", out]
        )
    assert rss[12] - rss[3] < 30e6, rss


@pytest.mark.slow
def test_data_prepare_survives_a_kill_mid_shard(tmp_path, corpus, capsys):
    text = _grammar_corpus(tmp_path / "c.txt", 4)
    cfg = pretraining_config(corpus, tmp_path, steps=2, logEverySteps=1)
    cfg["checkpoint"] = {"everySteps": 2}
    cfg["data"] = {
        "train": text,
        "validation": corpus["corpus"],
        "prepare": {"workers": 2, "output": str(tmp_path / "prepared")},
    }
    path = write_config(tmp_path / "cfg.yaml", cfg)
    out = tmp_path / "prepared"
    partial = out / ".train-00000-of-00002.tfrecord.partial"

    proc = _prepare_process(["--config", str(path), "--worker", "0"])
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size:  # records are being written
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert partial.exists(), "killed after the shard was complete: the corpus is too small"
    assert sorted(p.name for p in out.iterdir()) == [partial.name]  # nothing a training reads
    code = main(train_args(path, tmp_path / "term"))
    assert code == 3 and "slice(s) 0, 1 of 2" in (tmp_path / "term").read_text()

    for worker in (0, 1):
        assert main(["prepare", "--config", str(path), "--worker", str(worker)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "slice-00000-of-00002.json",
        "slice-00001-of-00002.json",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "validation-00000-of-00002.tfrecord",
        "validation-00001-of-00002.tfrecord",
    ]
    assert main(["prepare", "--config", str(path), "--worker", "0"]) == 0
    assert "prepared already" in capsys.readouterr().out  # the fingerprint matched: skipped

    trained = prepare.prepared(load_trainer_config(path))
    assert trained.data.format == "tfrecord" and trained.data.prepare is None
    assert trained.data.train.split(",") == [str(out / n) for n in names[2:4]]
    # (Workers training from such shards: tests/e2e/test_local_run.py and the real node's
    # tests/integration/test_real_node_prepare.py.)

    os.utime(text, ns=(time.time_ns(), time.time_ns()))  # the input changed since
    assert main(train_args(path, tmp_path / "term")) == 3
    assert "were prepared from other input or settings" in (tmp_path / "term").read_text()
