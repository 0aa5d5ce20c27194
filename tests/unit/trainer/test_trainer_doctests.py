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
        "divergence",
        "exit_codes",
        "headline",
        "observability",
        "preemption",
        "synthetic",
        "tasks",
        "tasks.base",
        "tasks.question_answering",
        "tasks.question_answering.decoding",
        "tasks.question_answering.metrics",
        "tasks.question_answering.windows",
        "tasks.regression",
        "tasks.seq2seq",
        "tasks.text",
        "tasks.token_classification",
        "textfiles",
    ],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"berth_trainer.{module}"))
    assert result.attempted > 0
    assert result.failed == 0
