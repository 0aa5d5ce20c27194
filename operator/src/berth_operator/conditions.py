"""Kubernetes-style status conditions, pure (dict in, dict out, injected clock).

A condition's `lastTransitionTime` moves only when its `status` flips, as
`meta.SetStatusCondition` does in Go; reason and message updates keep it.

    >>> conds = set_condition([], "Running", True, "AllWorkersReady", "3/3", "t1", 1)
    >>> set_condition(conds, "Running", True, "AllWorkersReady", "3/3", "t2", 1) == conds
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Condition = dict[str, Any]


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """Return `conditions` with condition `type_` set; unchanged ones are kept as they are."""
    wanted = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        same = (cond.get("status"), cond.get("reason"), cond.get("message")) == (
            wanted,
            reason,
            message,
        )
        if same and cond.get("observedGeneration") == generation:
            out.append(dict(cond))
            continue
        flipped = cond.get("status") != wanted
        out.append(
            _condition(
                type_,
                wanted,
                reason,
                message,
                now if flipped else cond.get("lastTransitionTime", now),
                generation,
            )
        )
    if not found:
        out.append(_condition(type_, wanted, reason, message, now, generation))
    return out


def get_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    """The condition of type `type_`, or None."""
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def _condition(
    type_: str, status: str, reason: str, message: str, time: str, generation: int | None
) -> Condition:
    cond: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": time,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
