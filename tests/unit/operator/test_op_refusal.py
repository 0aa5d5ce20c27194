"""What a training's status says after a create the API server refused (berth_operator.refusal)."""

from __future__ import annotations

from typing import Any

import pytest

from berth_operator.refusal import MAX_MESSAGE, REASON, refused

FORBIDDEN = 'pods "b-worker-0" is forbidden: exceeded quota: q'


def _said(message: str) -> dict[str, Any]:
    return {
        "conditions": [{"type": "Created", "status": "False", "reason": REASON, "message": message}]
    }


@pytest.mark.parametrize(
    ("plan", "phase"),
    [
        ({"phase": "Starting", "workers": {"active": 0}}, "Pending"),
        ({"phase": "Starting", "workers": {"active": 1}}, "Starting"),
        ({"phase": "Restarting", "workers": {"active": 0}}, "Restarting"),
        ({"phase": "Running", "workers": {"active": 3}}, "Running"),
    ],
)
def test_phase_is_kept_but_nothing_claims_to_start(plan: dict[str, Any], phase: str) -> None:
    status, _ = refused({}, {**plan, "startTime": "t1"}, FORBIDDEN, "t1", 1)
    assert status["phase"] == phase and "startTime" not in status
    assert status["message"] == FORBIDDEN


def test_start_time_of_a_started_training_is_kept() -> None:
    old = {"phase": "Restarting", "startTime": "t0"}
    status, _ = refused(old, {**old, "workers": {}}, FORBIDDEN, "t1", 1)
    assert status["startTime"] == "t0"


@pytest.mark.parametrize(
    ("old", "warn"),
    [
        ({}, True),
        (_said(FORBIDDEN), False),  # the same message again: no second event
        (_said("serviceaccount not found"), True),  # a new cause is news
        ({"conditions": [{"type": "Created", "status": "True", "reason": "WorkersCreated"}]}, True),
    ],
)
def test_one_warning_per_distinct_message(old: dict[str, Any], warn: bool) -> None:
    status, warned = refused(old, {"phase": "Starting"}, FORBIDDEN, "t1", 1)
    assert warned is warn
    [cond] = [c for c in status["conditions"] if c["type"] == "Created"]
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", REASON, FORBIDDEN)


def test_long_messages_are_cut() -> None:
    status, _ = refused({}, {"phase": "Starting"}, "x" * 5000, "t1", 1)
    assert len(status["message"]) == MAX_MESSAGE
