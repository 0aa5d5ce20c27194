"""A create the API server refused: what the training's status says, and whether to warn. Pure.

A missing ServiceAccount, Pod Security admission or a ResourceQuota (403), an invalid object
(422), a name taken by an object the training does not own: retrying alone fixes none of these,
so the user must hear of it, in the status (condition `Created` False, reason CreateFailed, and
`status.message`) and in one Warning event per distinct message, not one per retry. The operator
keeps retrying with bounded backoff; once a create succeeds, the plan's own `Created` condition
(WorkersCreated) replaces this one.

    >>> plan = {"phase": "Starting", "startTime": "t1", "workers": {"active": 0}}
    >>> status, warn = refused({}, plan, 'pods "b-worker-0" is forbidden: quota', "t1", 1)
    >>> status["phase"], status["conditions"][0]["reason"], "startTime" in status, warn
    ('Pending', 'CreateFailed', False, True)
    >>> refused(status, plan, 'pods "b-worker-0" is forbidden: quota', "t2", 1)[1]
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth_operator.api import ConditionType, Phase
from berth_operator.conditions import get_condition, set_condition

REASON = "CreateFailed"
#: Longest message kept (an API server's message can list many fields).
MAX_MESSAGE = 1024


def refused(
    old_status: Mapping[str, Any],
    status: Mapping[str, Any],
    message: str,
    now: str,
    generation: int | None,
) -> tuple[dict[str, Any], bool]:
    """The pass's `status` once a create was refused with `message`, and whether to post a
    Warning event (the message is new: not already in `old_status`).

    The phase stays what it was, except that a training none of whose workers exists is
    Pending, not Starting; nor has it started (no startTime, so runPolicy.activeDeadlineSeconds
    does not run while nothing runs)."""
    message = message[:MAX_MESSAGE]
    out = dict(status)
    if out.get("phase") == Phase.STARTING.value and not (out.get("workers") or {}).get("active"):
        out["phase"] = Phase.PENDING.value
    if "startTime" not in old_status:
        out.pop("startTime", None)
    out["message"] = message
    out["conditions"] = set_condition(
        out.get("conditions") or [],
        ConditionType.CREATED.value,
        False,
        REASON,
        message,
        now,
        generation,
    )
    before = get_condition(old_status.get("conditions") or [], ConditionType.CREATED.value)
    said = before is not None and [before.get(k) for k in ("status", "reason", "message")] == [
        "False",
        REASON,
        message,
    ]
    return out, not said
