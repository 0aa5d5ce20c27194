"""What a reconcile pass reports: its events (posted and logged) and the operator's counters.

Shared by the pod path (`controller`) and the Cloud TPU path (`tpu.handlers`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from berth_operator import metrics
from berth_operator.api import FINISHED_PHASES
from berth_operator.policy import Event

log = logging.getLogger("berth_operator.handlers")


def record_pass(
    body: kopf.Body,
    namespace: str,
    name: str,
    events: Iterable[Event],
    old_status: Mapping[str, Any],
    new_status: Mapping[str, Any],
) -> None:
    """Post and log the pass's events; count group restarts and finished trainings."""
    for event in events:
        # Our own logger: kopf's would post warnings as events a second time.
        log.log(
            logging.WARNING if event.type == "Warning" else logging.INFO,
            "%s/%s %s: %s",
            namespace,
            name,
            event.reason,
            event.message,
        )
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    for cause, field in (("failure", "restarts"), ("disruption", "disruptions")):
        if int(new_status.get(field) or 0) > int(old_status.get(field) or 0):
            metrics.RESTARTS.labels(cause=cause).inc()
    phase = new_status.get("phase")
    if phase != old_status.get("phase") and phase in FINISHED_PHASES:
        metrics.FINISHED.labels(phase=phase).inc()
