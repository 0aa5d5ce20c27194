"""The fine-tuning tasks' config rules (pydantic, the same as the CRD's CEL rules), and the data
format each task reads (checked at start, exit code 2)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from trainer_testlib import TINY_MODEL, run_cli, train_args, write_config

from berth_trainer.config import TrainerConfig
from berth_trainer.exit_codes import ExitCode


def _config(task: str, **sections) -> dict:
    return {
        "task": task,
        "vocabulary": "vocab.txt",
        "model": dict(TINY_MODEL),
        "data": {"train": "train.jsonl", "format": "jsonl"},
        "training": {"sequenceLength": 32},
        "output": {"dir": "out"},
        **sections,
    }


@pytest.mark.parametrize(
    ("task", "sections", "error"),
    [
        (
            "questionAnswering",
            {"questionAnswering": {"docStride": 10, "maxQueryLength": 20}},
            "questionAnswering.docStride: 10 exceeds the context window",
        ),
        (  # the defaults (stride 64, query 32) need sequenceLength >= 99
            "questionAnswering",
            {},
            "questionAnswering.docStride: 64 exceeds",
        ),
        ("seq2seq", {"seq2seq": {"maxTargetLength": 30}}, "seq2seq.maxTargetLength: 30 leaves"),
        ("seq2seq", {"seq2seq": {"beamSize": 0}}, "seq2seq.beamSize"),
        (
            "tokenClassification",
            {"tokenClassification": {"scheme": "iob1"}},
            "tokenClassification.scheme",
        ),
        (  # data.prepare packs a pre-training text corpus
            "regression",
            {"data": {"train": "t.csv", "format": "csv", "prepare": {"output": "p"}}},
            "data.prepare: only for task pretraining with data.format text",
        ),
        (
            "pretraining",
            {"data": {"train": "t.tfrecord", "format": "tfrecord", "prepare": {"output": "p"}}},
            "data.prepare: only for task pretraining with data.format text",
        ),
        (
            "pretraining",
            {"data": {"train": "t", "prepare": {"output": "p", "workers": 0}}},
            "data.prepare.workers",
        ),
        (
            "pretraining",
            {
                "data": {"train": "t", "format": "googleTfrecord"},
                "pretraining": {"packing": "segmentPairs", "sentencePrediction": "sentenceOrder"},
            },
            "googleTfrecord records carry next-sentence labels",
        ),
        (
            "regression",
            {"data": {"train": "t", "format": "googleTfrecord"}},
            "task pretraining",
        ),
    ],
)
def test_task_rules_name_the_field(task, sections, error):
    with pytest.raises(ValidationError, match=error):
        TrainerConfig.model_validate(_config(task, **sections))


@pytest.mark.parametrize(
    ("task", "sections"),
    [
        ("questionAnswering", {"questionAnswering": {"docStride": 8, "maxQueryLength": 16}}),
        ("seq2seq", {"seq2seq": {"maxTargetLength": 29}}),
        ("tokenClassification", {"tokenClassification": {"scheme": "bioes"}}),
        ("regression", {}),
    ],
)
def test_task_configs_at_the_limits_are_valid(task, sections):
    # maxPredictionsPerSequence (default 20) only constrains pretraining: 20 < 32 anyway, so
    # check it with a sequence shorter than it.
    cfg = _config(task, **sections)
    TrainerConfig.model_validate(cfg)
    if task != "seq2seq" and task != "questionAnswering":
        TrainerConfig.model_validate({**cfg, "training": {"sequenceLength": 16}})


@pytest.mark.parametrize(
    ("task", "fmt", "reads"),
    [
        ("regression", "conll", "regression reads csv, tsv, jsonl"),
        ("tokenClassification", "csv", "tokenClassification reads conll, jsonl"),
        ("questionAnswering", "jsonl", "questionAnswering reads squad"),
        ("seq2seq", "text", "seq2seq reads jsonl"),
    ],
)
def test_a_format_the_task_does_not_read_fails_at_start(tmp_path, task, fmt, reads):
    (tmp_path / "train").write_text("x\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nx\n")
    cfg = _config(
        task,
        questionAnswering={"docStride": 8, "maxQueryLength": 8},
        seq2seq={"maxTargetLength": 8},
    )
    cfg |= {"vocabulary": str(vocab), "output": {"dir": str(tmp_path / "out")}}
    cfg["data"] = {"train": str(tmp_path / "train"), "format": fmt}
    result = run_cli(train_args(write_config(tmp_path / "cfg.yaml", cfg), tmp_path / "term"))
    assert result.returncode == ExitCode.CONFIG_INVALID, result.stdout[-2000:]
    assert f"data.format: {reads}" in (tmp_path / "term").read_text()
