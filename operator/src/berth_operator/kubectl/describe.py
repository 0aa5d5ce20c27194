"""`kubectl berth describe NAME`: one screen on a training, rendered from plain dicts (pure).

`render` takes what `fetch` read (the BertTraining, its pods, Services and events, as the API
server returns them) and the time, so the whole screen is tested without a cluster:

    >>> from datetime import UTC, datetime
    >>> training = {"metadata": {"name": "b", "namespace": "ml"}, "spec": {"workers": 1},
    ...             "status": {"phase": "Pending"}}
    >>> print(render(training, [], [], datetime(2025, 1, 1, tzinfo=UTC)).splitlines()[2])
    Phase:       Pending
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from berth_operator import labels, tensorboard
from berth_operator.kubectl.reader import Reader
from berth_operator.workers import WorkerState, observe_pod, parse_time

#: Events shown, the most recent last (as `kubectl describe` does).
MAX_EVENTS = 15
#: Characters of a message in a table cell, in a restart's cause, and in a field or a failed
#: worker's line.
CELL, CAUSE, LONG = 120, 200, 400
#: The operator's Restarting event: "restarting all 3 workers (restart 1): <why>".
RESTARTING = re.compile(
    r"^restarting all \d+ workers \(((?:restart|disruption) \d+)\): (.*)$", re.S
)

Obj = Mapping[str, Any]
#: The time of an event without any timestamp (sorts first).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def age(delta: timedelta) -> str:
    """A duration the way kubectl prints ages (`k8s.io/apimachinery/pkg/util/duration`).

    >>> [age(timedelta(seconds=s)) for s in (-5, 45, 150, 3600, 5 * 3600 + 60, 3 * 86400)]
    ['0s', '45s', '2m30s', '60m', '5h1m', '3d']
    """
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def since(stamp: str | None, now: datetime) -> str:
    """The age of an RFC 3339 `stamp` at `now`, or `<unknown>`."""
    when = parse_time(stamp)
    return age(now - when) if when else "<unknown>"


def one_line(text: Any) -> str:
    """`text` with its line breaks and runs of spaces folded, for a table cell or a field."""
    return " ".join(str(text or "").split())


def clip(text: Any, width: int) -> str:
    """`text` on one line, cut to `width` characters with `...` where it was cut: a failed
    worker's termination message can be the last kilobyte of its log.

    >>> clip(" a  b c ", 10), clip("abcdefghij", 8)
    ('a b c', 'abcde...')
    """
    line = one_line(text)
    return line if len(line) <= width else line[: width - 3] + "..."


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (
            indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def number(value: float) -> str:
    """A figure with four significant digits: 2.5, 0.9123, 1234."""
    return f"{value:.4g}"


def group_of(status: Mapping[str, Any]) -> int:
    """The current group's number: `restarts + disruptions` (the pods' `berth.dev/restart`)."""
    return int(status.get("restarts") or 0) + int(status.get("disruptions") or 0)


def role(pod: Obj) -> str | None:
    return (pod.get("metadata", {}).get("labels") or {}).get(labels.ROLE)


def progress_line(progress: Mapping[str, Any]) -> str | None:
    """status.progress in words: step/total (percent), loss, examples/s, ETA.

    >>> progress_line({"step": 120, "totalSteps": 1000, "percent": 12, "loss": 2.5,
    ...                "examplesPerSecond": 320.0, "etaSeconds": 250})
    'step 120/1000 (12%), loss 2.5, 320 examples/s, ETA 4m10s'
    """
    parts = []
    step, total = progress.get("step"), progress.get("totalSteps")
    if step is not None:
        text = f"step {step}/{total}" if total else f"step {step}"
        if progress.get("percent") is not None:
            text += f" ({progress['percent']}%)"
        parts.append(text)
    elif progress.get("summary"):  # while Preparing: "prepare 42%"
        parts.append(str(progress["summary"]))
    if progress.get("loss") is not None:
        parts.append(f"loss {number(progress['loss'])}")
    if progress.get("examplesPerSecond") is not None:
        parts.append(f"{number(progress['examplesPerSecond'])} examples/s")
    if progress.get("etaSeconds") is not None:
        parts.append(f"ETA {age(timedelta(seconds=progress['etaSeconds']))}")
    if progress.get("lastCheckpointStep") is not None:
        parts.append(f"checkpoint at step {progress['lastCheckpointStep']}")
    return ", ".join(parts) or None


def validation_line(validation: Mapping[str, Any]) -> str | None:
    """status.validation in words: the headline, the step, every metric.

    >>> validation_line({"step": 40, "summary": "f1 0.912", "metrics": [
    ...     {"name": "exact_match", "value": 0.8}, {"name": "f1", "value": 0.91234}]})
    'f1 0.912 at step 40 (exact_match 0.8, f1 0.9123)'
    """
    metrics = validation.get("metrics") or []
    if not metrics and not validation.get("summary"):
        return None
    head = str(validation.get("summary") or "metrics")
    if validation.get("step") is not None:
        head += f" at step {validation['step']}"
    listed = ", ".join(f"{m['name']} {number(m['value'])}" for m in metrics)
    return f"{head} ({listed})" if listed else head


def restarts_line(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    """Restarts against runPolicy.backoffLimit, disruptions against disruptionLimit.

    >>> restarts_line({"runPolicy": {"backoffLimit": 3}}, {"restarts": 1, "disruptions": 2})
    '1 of runPolicy.backoffLimit 3; disruptions 2 (no limit)'
    """
    policy = spec.get("runPolicy") or {}
    limit = policy.get("disruptionLimit")
    disruptions = f"disruptions {status.get('disruptions') or 0}"
    disruptions += f" of runPolicy.disruptionLimit {limit}" if limit is not None else " (no limit)"
    backoff = policy.get("backoffLimit", 3)
    return f"{status.get('restarts') or 0} of runPolicy.backoffLimit {backoff}; {disruptions}"


def worker_rows(states: Mapping[int, WorkerState], workers: int) -> list[list[str]]:
    """The current group's table: one row per worker index, `-` where it has no pod."""
    rows = [["WORKER", "POD", "NODE", "PHASE", "READY", "EXIT", "REASON"]]
    for index in range(workers):
        s = states.get(index)
        if s is None:
            rows.append([str(index), "-", "-", "-", "-", "", ""])
            continue
        phase = f"{s.phase} (terminating)" if s.terminating else s.phase
        exit_code = "" if s.exit_code is None or s.phase == "Running" else str(s.exit_code)
        reason = s.disruption or (s.reason if not s.succeeded else "") or ""
        rows.append(
            [str(index), s.name, s.node or "-", phase, str(s.ready).lower(), exit_code, reason]
        )
    return rows


def restart_causes(
    events: Iterable[Obj], earlier: Iterable[WorkerState], current: int
) -> list[str]:
    """Why each earlier group ended: the operator's Restarting events (oldest first), then the
    failed pods of earlier groups still present whose failure no event names.

    >>> causes = restart_causes([{"reason": "Restarting", "message": "restarting all 2 "
    ...     "workers (restart 1): worker 1 (b-worker-1) failed: exit code 137"}], [], 1)
    >>> causes
    ['restart 1: worker 1 (b-worker-1) failed: exit code 137']
    """
    causes = []
    said = []
    for event in sorted(events, key=event_time):
        if event.get("reason") != "Restarting":
            continue
        text = one_line(event.get("message"))
        found = RESTARTING.match(text)
        causes.append(clip(f"{found[1]}: {found[2]}" if found else text, CAUSE))
        said.append(text)
    for s in sorted(earlier, key=lambda s: (s.restart, s.index)):
        if s.restart < current and s.failed:
            why = one_line(s.describe())
            if not any(why in text for text in said):
                causes.append(clip(f"group {s.restart}: {why}", CAUSE))
    return causes


def event_time(event: Obj) -> datetime:
    """When an event last happened: the latest of lastTimestamp, series.lastObservedTime,
    eventTime (microseconds: it orders the operator's events within a second) and
    firstTimestamp.

    >>> event_time({"lastTimestamp": "2025-01-01T00:00:01Z",
    ...             "eventTime": "2025-01-01T00:00:01.250000Z"}).isoformat()
    '2025-01-01T00:00:01.250000+00:00'
    """
    series = event.get("series") or {}
    stamps = (
        event.get("lastTimestamp"),
        series.get("lastObservedTime"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
    )
    return max((t for s in stamps if (t := parse_time(s))), default=EPOCH)


def event_rows(events: Iterable[Obj], now: datetime, limit: int = MAX_EVENTS) -> list[list[str]]:
    """The training's events, alike ones (type, reason, message) folded into one with their
    count summed, the most recent last; only the last `limit`."""
    folded: dict[tuple[str, str, str], tuple[datetime, int]] = {}
    for event in events:
        key = (
            str(event.get("type") or ""),
            str(event.get("reason") or ""),
            clip(event.get("message"), CELL),
        )
        last, count = folded.get(key, (EPOCH, 0))
        folded[key] = (max(last, event_time(event)), count + int(event.get("count") or 1))
    ordered = sorted(folded.items(), key=lambda item: item[1][0])[-limit:]
    rows = [["TYPE", "REASON", "AGE", "COUNT", "MESSAGE"]]
    for (type_, reason, message), (last, count) in ordered:
        rows.append(
            [type_, reason, age(now - last) if last > EPOCH else "<unknown>", str(count), message]
        )
    return rows


def tensorboard_line(name: str, pods: Iterable[Obj], services: Iterable[Obj]) -> str:
    """spec.tensorboard: its Service and whether a TensorBoard pod is ready."""
    service = tensorboard.tensorboard_name(name)
    if not any(s.get("metadata", {}).get("name") == service for s in services):
        return f"enabled; Service {service} not created yet"
    ready = [
        p["metadata"]["name"]
        for p in pods
        if role(p) == labels.ROLE_TENSORBOARD
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]
    state = f"ready ({ready[0]})" if ready else "not ready"
    return f"Service {service}:{tensorboard.PORT}, {state}; kubectl berth tensorboard {name}"


def render(
    training: Obj,
    pods: Sequence[Obj],
    events: Sequence[Obj],
    now: datetime,
    services: Sequence[Obj] = (),
) -> str:
    """The screen `kubectl berth describe` prints for `training`, its `pods` (every role),
    its `events` and its `services`, as of `now`."""
    meta, spec = training.get("metadata") or {}, training.get("spec") or {}
    status = training.get("status") or {}
    name = str(meta.get("name"))
    conditions = status.get("conditions") or []
    phase = status.get("phase") or "Pending"
    cause = next(
        (c.get("reason") for c in conditions if c.get("type") == phase and c.get("reason")), None
    )
    fields: list[tuple[str, str | None]] = [
        ("Name", name),
        ("Namespace", meta.get("namespace")),
        ("Phase", f"{phase} ({cause})" if cause else phase),
        ("Message", clip(status.get("message"), LONG) or None),
        ("Task", spec.get("task")),
        ("Workers", str(spec.get("workers") or 1)),
    ]
    for label, key in (("Started", "startTime"), ("Completed", "completionTime")):
        if status.get(key):
            fields.append((label, f"{status[key]} ({since(status[key], now)} ago)"))
    fields += [
        ("Progress", progress_line(status.get("progress") or {})),
        ("Validation", validation_line(status.get("validation") or {})),
        ("Restarts", restarts_line(spec, status)),
    ]
    queue = status.get("queue") or {}
    if queue:
        admitted = queue.get("clusterQueue")
        fields.append(
            (
                "Queue",
                f"LocalQueue {queue.get('name')}, Workload {queue.get('workload')}, "
                + (f"admitted by ClusterQueue {admitted}" if admitted else "not admitted"),
            )
        )
    prepare = status.get("prepare") or {}
    if prepare:
        fields.append(
            (
                "Prepare",
                f"Job {prepare.get('job')}: {prepare.get('succeeded') or 0}/"
                f"{prepare.get('workers')} slice(s) done, {prepare.get('active') or 0} running, "
                f"{prepare.get('failed') or 0} failed",
            )
        )
    if (spec.get("tensorboard") or {}).get("enabled"):
        fields.append(("TensorBoard", tensorboard_line(name, pods, services)))
    lines = [f"{label + ':':<13}{value}" for label, value in fields if value]

    if conditions:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        for c in conditions:
            rows.append(
                [
                    str(c.get("type")),
                    str(c.get("status")),
                    str(c.get("reason") or ""),
                    since(c.get("lastTransitionTime"), now),
                    clip(c.get("message"), CELL),
                ]
            )
        lines += ["", "Conditions:", *table(rows)]

    current = group_of(status)
    states = [s for p in pods if role(p) == labels.ROLE_WORKER and (s := observe_pod(p))]
    group = {s.index: s for s in states if s.restart == current}
    workers = int(spec.get("workers") or 1)
    ready = sum(s.ready for s in group.values())
    lines += ["", f"Workers (group {current}, {ready}/{workers} ready):"]
    lines += table(worker_rows(group, workers))
    for s in sorted(group.values(), key=lambda s: s.index):
        if s.failed or s.disruption:
            lines.append(f"  {clip(s.disruption or s.describe(), LONG)}")

    ours = [
        e
        for e in events
        if (e.get("involvedObject") or {}).get("kind") == labels.KIND
        and (e.get("involvedObject") or {}).get("name") == name
    ]
    causes = restart_causes(ours, states, current)
    if causes:
        lines += ["", "Restarts:", *(f"  {cause}" for cause in causes)]
    lines += ["", "Events:"]
    lines += table(event_rows(ours, now)) if ours else ["  <none>"]
    return "\n".join(lines) + "\n"


def fetch(reader: Reader) -> tuple[Obj, list[Obj], list[Obj], list[Obj]]:
    """What `render` shows: the training, its pods, its events and (with
    spec.tensorboard.enabled) its TensorBoard Service; ApiException 404 when the training does
    not exist."""
    training = reader.training()
    enabled = ((training.get("spec") or {}).get("tensorboard") or {}).get("enabled")
    services = reader.tensorboard_services() if enabled else []
    return training, list(reader.pods()), list(reader.events()), list(services)
