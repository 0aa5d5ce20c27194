"""What a worker pod says about itself: phase, readiness, exit code and why (pure).

>>> pod = {"metadata": {"name": "b-worker-1", "labels": {"berth.dev/index": "1",
...        "berth.dev/restart": "0"}}, "status": {"phase": "Failed", "containerStatuses": [
...        {"name": "trainer", "state": {"terminated": {"exitCode": 137,
...         "reason": "OOMKilled"}}}]}}
>>> w = observe_pod(pod)
>>> w.failed, w.exit_code, w.describe()
(True, 137, 'worker 1 (b-worker-1) failed: exit code 137 (OOMKilled)')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from berth_operator import labels
from berth_operator.builders import CONTAINER_NAME

#: Container waiting reasons that will not fix themselves quickly (count towards the timeout).
STUCK_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImageNeverPull",
    }
)
MAX_MESSAGE = 1024


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None stays None)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, second precision (as Kubernetes writes it)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """One observed worker pod."""

    name: str
    index: int
    restart: int
    phase: str
    ready: bool
    terminating: bool
    created: datetime | None
    ip: str | None
    exit_code: int | None
    reason: str | None
    message: str | None
    #: The node the pod is bound to (spec.nodeName), None while unscheduled.
    node: str | None = None
    #: Why the pod is being disrupted (its DisruptionTarget condition: reason, then message),
    #: e.g. "EvictionByEvictionAPI: Eviction API: evicting"; None when it is not.
    disruption: str | None = None

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    @property
    def running_somewhere(self) -> bool:
        """Bound to a node and not finished: its node decides whether it can still end."""
        return self.node is not None and self.phase not in ("Succeeded", "Failed")

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running", "Unknown") and not self.terminating

    def describe(self) -> str:
        """One line for status.message and events: who failed, how and why."""
        what = f"worker {self.index} ({self.name})"
        if self.reason == "Evicted":
            text = f"{what} was evicted"
        elif self.exit_code is not None:
            text = f"{what} failed: exit code {self.exit_code}"
            if self.reason:
                text += f" ({self.reason})"
        else:
            text = f"{what} failed" + (f": {self.reason}" if self.reason else "")
        if self.message:
            text += f": {self.message.strip()}"
        return text[:MAX_MESSAGE]


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER_NAME), {})


def observe_pod(pod: Mapping[str, Any]) -> WorkerState | None:
    """The state of a worker pod, or None for a pod without Berth's worker labels."""
    meta = pod.get("metadata", {})
    pod_labels = meta.get("labels") or {}
    try:
        index = int(pod_labels[labels.INDEX])
        restart = int(pod_labels.get(labels.RESTART, "0"))
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    target = conditions.get("DisruptionTarget") or {}
    disruption = None
    if target.get("status") == "True":
        said = [str(target[k]) for k in ("reason", "message") if target.get(k)]
        disruption = ": ".join(said) or "DisruptionTarget"
    container = _trainer_status(pod)
    terminated = (
        (container.get("state") or {}).get("terminated")
        or (container.get("lastState") or {}).get("terminated")
        or {}
    )
    exit_code = terminated.get("exitCode")
    reason = terminated.get("reason")
    message = terminated.get("message")
    if status.get("reason") == "Evicted" or (phase == "Failed" and not terminated):
        reason = status.get("reason") or reason
        message = status.get("message") or message
    if phase == "Pending":
        reason, message = pending_reason(pod)
    return WorkerState(
        name=meta.get("name", ""),
        index=index,
        restart=restart,
        phase=phase,
        ready=ready and phase == "Running",
        terminating=bool(meta.get("deletionTimestamp")),
        created=parse_time(meta.get("creationTimestamp")),
        ip=status.get("podIP"),
        exit_code=exit_code,
        reason=reason,
        message=message,
        node=(pod.get("spec") or {}).get("nodeName"),
        disruption=disruption,
    )


def pending_reason(pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Why a Pending pod is not running yet: Unschedulable, ImagePullBackOff, ... or None."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("reason") or "Unschedulable", cond.get("message")
    waiting = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in STUCK_WAITING_REASONS:
        return waiting["reason"], waiting.get("message")
    return None, None
