"""Each task's headline validation metric: the one number `kubectl get bt` shows (column
Metric) and the final figures keep first when they must be cut.

Imports no TensorFlow: the operator reads it to summarise the metrics it scrapes.

    >>> headline(Task.TOKEN_CLASSIFICATION, {"loss": 0.31, "f1": 0.91234, "precision": 0.9})
    'f1 0.912'
    >>> headline("seq2seq", {"rouge_l": 0.5, "exact_match": 0.25})
    'rougeL 0.500'
    >>> headline(Task.REGRESSION, {"loss": 1.0}) is None  # not computed (no data.validation)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from berth_trainer.config import Task

#: Task → (the metric its `evaluate` returns, without the `validation_` prefix; its short
#: label). Pretraining's `accuracy` is the masked-LM accuracy; seq2seq's `rouge_l` is ROUGE-L F.
HEADLINE: dict[Task, tuple[str, str]] = {
    Task.PRETRAINING: ("accuracy", "acc"),
    Task.CLASSIFICATION: ("accuracy", "acc"),
    Task.REGRESSION: ("pearson", "pearson"),
    Task.TOKEN_CLASSIFICATION: ("f1", "f1"),
    Task.QUESTION_ANSWERING: ("f1", "f1"),
    Task.SEQ2SEQ: ("rouge_l", "rougeL"),
    Task.MULTIPLE_CHOICE: ("accuracy", "acc"),
}


def headline_metric(task: Task | str) -> str | None:
    """The name of `task`'s headline metric, or None for a task this version does not know.

    >>> headline_metric("questionAnswering")
    'f1'
    """
    try:
        return HEADLINE[Task(task)][0]
    except ValueError:
        return None


def headline(task: Task | str, metrics: Mapping[str, float]) -> str | None:
    """`"<label> <value>"` (3 decimals) of `task`'s headline metric in `metrics` (names without
    the `validation_` prefix), or None when it is absent, not finite, or the task unknown."""
    try:
        name, label = HEADLINE[Task(task)]
    except ValueError:
        return None
    value = metrics.get(name)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return f"{label} {value:.3f}"
