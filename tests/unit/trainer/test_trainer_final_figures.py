"""What the chief reports for `kubectl get bt`: each task's headline metric, and the final
figures it leaves in the termination log (at most the 4096 bytes Kubernetes keeps)."""

from __future__ import annotations

import json
import math

import pytest

from berth_trainer.config import Task
from berth_trainer.headline import HEADLINE, headline
from berth_trainer.observability import final_figures


@pytest.mark.parametrize(
    ("task", "metrics", "expected"),
    [
        (Task.PRETRAINING, {"loss": 3.2, "accuracy": 0.41234, "sentence_accuracy": 0.7},
         "acc 0.412"),
        (Task.CLASSIFICATION, {"accuracy": 0.9375}, "acc 0.938"),
        (Task.REGRESSION, {"pearson": 0.98765, "spearman": 0.9, "mse": 0.1}, "pearson 0.988"),
        (Task.TOKEN_CLASSIFICATION, {"accuracy": 0.99, "f1": 0.91249}, "f1 0.912"),
        (Task.QUESTION_ANSWERING, {"exact_match": 0.5, "f1": 0.75, "has_answer_f1": 0.8},
         "f1 0.750"),
        (Task.SEQ2SEQ, {"rouge_l": 1.0, "exact_match": 1.0}, "rougeL 1.000"),
        (Task.MULTIPLE_CHOICE, {"accuracy": 0.0}, "acc 0.000"),
        ("tokenClassification", {"f1": 0.5}, "f1 0.500"),  # as the spec holds it
        (Task.REGRESSION, {"pearson": math.nan}, None),  # a diverged model
        (Task.REGRESSION, {"loss": 1.0}, None),  # not computed
        ("translation", {"accuracy": 1.0}, None),  # a task this version does not know
    ],
)  # fmt: skip
def test_headline(task: Task | str, metrics: dict[str, float], expected: str | None) -> None:
    assert headline(task, metrics) == expected


def test_every_task_has_a_headline() -> None:
    assert set(HEADLINE) == set(Task)


def test_final_figures_hold_rounded_numbers() -> None:
    text = final_figures(
        1000,
        1000,
        0.123456789,
        {"validation_f1": 0.912345678, "validation_loss": 12345.678901, "validation_x": math.inf},
        1000,
        task="tokenClassification",
    )
    assert json.loads(text) == {
        "step": 1000,
        "totalSteps": 1000,
        "loss": 0.123457,
        "validation": {"step": 1000, "metrics": {"f1": 0.912346, "loss": 12345.7}},
    }


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_final_figures_fit_the_termination_message(classes: int) -> None:
    """Per-class metrics beyond 4096 bytes are dropped, longest names first; the headline and
    the loss stay."""
    per_class = {f"validation_class_{i:04d}_f1": 1 / 3 for i in range(classes)}
    metrics = {"validation_f1": 0.5, "validation_loss": 0.25, **per_class}
    text = final_figures(10, 10, 1.0, metrics, 10, task="tokenClassification")
    assert len(text.encode("utf-8")) <= 4096
    kept = json.loads(text)["validation"]["metrics"]
    assert kept["f1"] == 0.5 and kept["loss"] == 0.25
    assert len(kept) == 2 + classes if classes <= 100 else 2 < len(kept) < 2 + classes
    assert len(final_figures(10, 10, 1.0, metrics, 10, task="tokenClassification", limit=80)) <= 80
