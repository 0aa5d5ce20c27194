"""The trainer's metrics endpoint says which worker serves it, as the operator checks it."""

from __future__ import annotations

import pytest

from berth_operator.local.runner import free_port
from berth_operator.progress import (
    fetch_metrics,
    identity_from_metrics,
    metrics_url,
    progress_from_metrics,
    validation_from_metrics,
)
from berth_trainer.observability import Reporter, identity


def test_reporter_serves_its_identity_beside_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_NAMESPACE", "ml")
    monkeypatch.setenv("BERTH_TRAINING", "bert")
    monkeypatch.setenv("BERTH_RESTART", "2")
    port = free_port()
    reporter = Reporter(total_steps=10, metrics_port=port, tb_dir=None, worker=0)
    reporter.start(0)
    reporter.step(3, {"loss": 1.5}, examples=8, log_now=True)
    text = fetch_metrics(metrics_url("127.0.0.1", port))
    assert identity_from_metrics(text) == identity("ml", "bert", 2, 0)
    assert identity_from_metrics(text) != identity("ml", "bert", 1, 0)
    assert progress_from_metrics(text)["step"] == 3
    assert validation_from_metrics(text, "classification") is None  # none taken yet
    reporter.validation(10, {"validation_accuracy": 0.8125, "validation_loss": 0.5})
    text = fetch_metrics(metrics_url("127.0.0.1", port))
    assert validation_from_metrics(text, "classification") == {
        "step": 10,
        "metrics": [{"name": "accuracy", "value": 0.8125}, {"name": "loss", "value": 0.5}],
        "summary": "acc 0.812",
    }
