"""The examples in the operator's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "api",
    "builders",
    "conditions",
    "expectations",
    "kueue",
    "labels",
    "leader",
    "networkpolicy",
    "local.manifest",
    "local.view",
    "podtemplate",
    "policy",
    "prepare",
    "progress",
    "refusal",
    "tensorboard",
    "kubectl.cli",
    "kubectl.describe",
    "kubectl.logs",
    "kubectl.tensorboard",
    "workers",
    "workqueue",
]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"berth_operator.{module}"))
    assert result.attempted > 0 or module == "labels"
    assert result.failed == 0
