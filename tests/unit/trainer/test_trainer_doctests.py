"""The examples in the trainer's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "bert_pretrainer",
        "config",
        "exit_codes",
        "observability",
        "preemption",
        "synthetic",
        "tasks",
        "tasks.question_answering",
        "tasks.regression",
        "tasks.seq2seq",
        "tasks.text",
        "tasks.token_classification",
    ],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"berth_trainer.{module}"))
    assert result.attempted > 0
    assert result.failed == 0
