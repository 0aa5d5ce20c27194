"""Bad inputs fail with a clear message, the documented exit code and a termination log,
through the real CLI process; bad data files fail in the task's reader (`BertTask.prepare`)
with the same error, naming the field, file and line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from trainer_testlib import (
    classification_config,
    pretraining_config,
    run_cli,
    task_of,
    write_config,
)

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode


def _run(tmp_path, cfg: dict, **env: str) -> tuple[int, str]:
    config = write_config(tmp_path / "cfg.yaml", cfg)
    term = tmp_path / "termination-log"
    result = run_cli(
        ["train", "--config", config, "--metrics-port", "0"],
        timeout=120,
        BERTH_TERMINATION_LOG=str(term),
        **env,
    )
    message = term.read_text() if term.exists() else ""
    assert message and message in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    return result.returncode, message


def test_trainer_invalid_config_fails_fast_naming_the_field(tmp_path, corpus):
    cfg = pretraining_config(corpus, tmp_path)
    cfg["training"]["globalBatchSize"] = 0
    start = time.monotonic()
    code, message = _run(tmp_path, cfg)
    assert time.monotonic() - start < 2.0
    assert code == ExitCode.CONFIG_INVALID
    assert "training.globalBatchSize" in message


def test_trainer_sequence_length_over_max_is_config_invalid(tmp_path, corpus):
    cfg = pretraining_config(corpus, tmp_path, sequenceLength=64)
    code, message = _run(tmp_path, cfg)
    assert code == ExitCode.CONFIG_INVALID
    assert "training.sequenceLength: 64 exceeds model.maxSequenceLength 32" in message


@pytest.mark.parametrize(
    ("case", "code", "expected"),
    [
        ("missing_data", ExitCode.DATA_INVALID, "data.train: no file matches"),
        ("empty_file", ExitCode.DATA_INVALID, "data.train: file is empty"),
        ("malformed_csv", ExitCode.DATA_INVALID, "bad.csv:3: malformed row: expected 2 fields"),
        ("vocab_without_mask", ExitCode.VOCAB_INVALID, "lacks the special token(s) [MASK]"),
    ],
)
def test_trainer_bad_input_exit_codes(tmp_path, corpus, case, code, expected):
    cfg = pretraining_config(corpus, tmp_path)
    if case == "missing_data":
        cfg["data"]["train"] = str(tmp_path / "nowhere" / "*.txt")
    elif case == "empty_file":
        (tmp_path / "empty.txt").write_text("")
        cfg["data"]["train"] = str(tmp_path / "empty.txt")
    elif case == "malformed_csv":
        cfg = classification_config(corpus, tmp_path)
        (tmp_path / "bad.csv").write_text('text,label\n"fine",positive\n"too","many",fields\n')
        cfg["data"] = {"train": str(tmp_path / "bad.csv"), "format": "csv"}
    elif case == "vocab_without_mask":
        lines = Path(corpus["vocab"]).read_text().splitlines()
        (tmp_path / "vocab.txt").write_text("\n".join(t for t in lines if t != "[MASK]") + "\n")
        cfg["vocabulary"] = str(tmp_path / "vocab.txt")
    got, message = _run(tmp_path, cfg)
    assert got == code, message
    assert expected in message


def test_trainer_fails_fast_when_the_pod_gets_no_gpu(tmp_path, corpus):
    """A pod that requests nvidia.com/gpu (the operator sets BERTH_EXPECTED_GPUS) but sees no
    GPU — this machine has none, and this environment no CUDA libraries — exits permanently
    before training, telling the user which image to run."""
    cfg = pretraining_config(corpus, tmp_path)
    code, message = _run(tmp_path, cfg, BERTH_EXPECTED_GPUS="2")
    assert code == ExitCode.GPU_MISSING
    assert "requests nvidia.com/gpu: 2 but TensorFlow sees 0 GPU(s)" in message
    assert "berth-trainer:<version>-gpu" in message and "spec.allowCpuFallback" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- the readers (`task.prepare`), without a process: the CLI case above shows that their
# exit code and `FIELD: FILE:LINE:` message reach the termination log ------------------------

BOM = b"\xef\xbb\xbf"


def _sentence_config(corpus, tmp_path, task: str = "classification", fmt: str = "csv") -> dict:
    cfg = classification_config(corpus, tmp_path)
    cfg["task"], cfg["data"]["format"] = task, fmt
    if task == "regression":
        cfg["training"].pop("numClasses")
    return cfg


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def _prepare_error(cfg: dict, train: list[str], validation: list[str]) -> str:
    """The message of the data error `prepare` raises (exit code 3)."""
    with pytest.raises(TrainerError) as err:
        task_of(cfg).prepare(train, validation)
    assert err.value.code == ExitCode.DATA_INVALID == 3
    return str(err.value)


def test_trainer_classification_csv_with_a_bom_finds_its_text_header(tmp_path, corpus):
    path = _write(tmp_path, "bom.csv", BOM + b"text,label\nfine film,positive\ndull,negative\n")
    task = task_of(_sentence_config(corpus, tmp_path))
    task.prepare([path], [path])
    assert task.labels == ["negative", "positive"]
    assert [r.texts for r in task.examples([path], "data.train")] == [("fine film",), ("dull",)]


def test_trainer_regression_csv_with_only_a_header_has_no_examples(tmp_path, corpus):
    path = _write(tmp_path, "empty.csv", b"text,label\n\n")
    message = _prepare_error(_sentence_config(corpus, tmp_path, "regression"), [path], [])
    assert message == f"data.train: no examples in {[path]}"


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("csv", b"text,label\nfine,positive\nvoil\xe0,negative\n"),
        ("jsonl", b'{"text": "fine", "label": "positive"}\n\n{"text": "voil\xe0", "label": "x"}\n'),
    ],
)
def test_trainer_a_byte_that_is_not_utf8_names_field_file_and_line(tmp_path, corpus, fmt, data):
    path = _write(tmp_path, f"latin1.{fmt}", data)
    message = _prepare_error(_sentence_config(corpus, tmp_path, fmt=fmt), [path], [])
    assert message.startswith(f"data.train: {path}:3: not UTF-8"), message


@pytest.mark.parametrize(
    ("row", "what"),
    [
        ("{not json", "invalid JSON"),
        ('{"text": "fine"}', "missing field(s) ['label']"),
        ('{"text": "fine", "label": "neutral"}', "label 'neutral' does not occur in data.train"),
    ],
)
def test_trainer_a_bad_validation_row_names_data_validation(tmp_path, corpus, row, what):
    good = '{"text": "fine", "label": "positive"}\n{"text": "dull", "label": "negative"}\n'
    train = _write(tmp_path, "train.jsonl", good.encode())
    validation = _write(tmp_path, "validation.jsonl", (good + row + "\n").encode())
    cfg = _sentence_config(corpus, tmp_path, fmt="jsonl")
    message = _prepare_error(cfg, [train], [validation])
    assert message.startswith(f"data.validation: {validation}:3: {what}"), message
