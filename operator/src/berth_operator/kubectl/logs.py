"""`kubectl berth logs NAME`: a training's worker logs, following it across group restarts.

Which pods to read is pure (`sources`: the current group's worker N, or all of them; the data
prepare Job's pods while the training is Preparing); reading them is thin I/O around it. With
`--all` every line carries its worker and group, e.g. `[worker-1 r2] `:

    >>> pod = {"metadata": {"name": "b-worker-1", "uid": "u", "labels": {
    ...     "berth.dev/role": "worker", "berth.dev/index": "1", "berth.dev/restart": "2"}}}
    >>> prefix(pod)
    '[worker-1 r2] '

`--follow` polls the training and its pods each second: it streams each selected pod as soon as
its container has started; when the group is replaced it prints the old group's last lines, a
marker line such as
`--- group restart 1: restart 1/3: worker 1 (b-worker-1) failed: exit code 137 ---` and then
the new group's logs from their start (the operator may start a new worker while an old one
still stops: its log waits, the kubelet keeps it); it ends once the training is Succeeded or
Failed and every stream it opened has ended.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from kubernetes.client.exceptions import ApiException

from berth_operator import labels
from berth_operator.api import FINISHED_PHASES, Phase
from berth_operator.builders import CONTAINER_NAME
from berth_operator.kubectl.describe import (
    RESTARTING,
    clip,
    event_time,
    group_of,
    one_line,
)
from berth_operator.kubectl.reader import Reader

Obj = Mapping[str, Any]
#: Seconds between two looks at the training and its pods while following.
POLL_SECONDS = 1.0
#: Seconds the new group's logs wait at most for the old group's streams to end (a stream
#: from a lost node may never end).
HOLD_SECONDS = 120.0
#: Times a stream refused with 400 (its container not ready for logs yet) is opened again.
MAX_TRIES = 5
#: Characters of the restart's cause in the marker (a termination message can be a log tail).
MARKER_REASON = 200
SINCE = re.compile(r"^(\d+)(s|m|h)$")


class NoLogsError(Exception):
    """The training has no pod whose logs could be shown (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One pod whose log is shown: its container, the prefix of its lines, whether the
    container has started (before that the kubelet has no log to give)."""

    pod: str
    uid: str
    container: str
    prefix: str
    group: int
    started: bool


def parse_since(text: str) -> int:
    """`--since` as seconds: 30s, 5m, 2h (kubectl's common forms).

    >>> parse_since("90s"), parse_since("5m"), parse_since("2h")
    (90, 300, 7200)
    """
    found = SINCE.match(text.strip())
    if not found:
        raise ValueError(f"invalid --since {text!r}: use a duration like 30s, 5m or 2h")
    return int(found[1]) * {"s": 1, "m": 60, "h": 3600}[found[2]]


def _labels(pod: Obj) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def prefix(pod: Obj) -> str:
    """The prefix of a pod's lines: `[worker-I rG] ` (index, group) or `[prepare-I] ` (the
    prepare Job's completion index)."""
    found = _labels(pod)
    if found.get(labels.ROLE) == labels.ROLE_PREPARE:
        return f"[prepare-{found.get(labels.JOB_COMPLETION_INDEX, '?')}] "
    return f"[worker-{found.get(labels.INDEX, '?')} r{found.get(labels.RESTART, '0')}] "


def started(pod: Obj, container: str) -> bool:
    """Whether `container` of `pod` has started: running, or terminated (now or before)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            state, last = status.get("state") or {}, status.get("lastState") or {}
            return bool(state.get("running") or state.get("terminated") or last.get("terminated"))
    return False


def container_of(pod: Obj) -> str:
    """The trainer's container (the first one when a pod template renamed it away)."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    return CONTAINER_NAME if CONTAINER_NAME in names or not names else str(names[0])


def current_group(training: Obj, pods: Sequence[Obj]) -> int:
    """The current group's number: from status (`restarts + disruptions`), or before the
    operator wrote any status the newest group among the worker pods."""
    status = training.get("status") or {}
    if "restarts" in status or "disruptions" in status:
        return group_of(status)
    groups = [
        int(_labels(p).get(labels.RESTART, "0"))
        for p in pods
        if _labels(p).get(labels.ROLE) == labels.ROLE_WORKER
    ]
    return max(groups, default=0)


def sources(training: Obj, pods: Sequence[Obj], worker: int | None) -> list[Source]:
    """The pods to show, in order: the current group's worker `worker` (None: every worker);
    while the training is Preparing and has no such worker, the prepare Job's pods."""
    group = current_group(training, pods)

    def source(pod: Obj, pod_group: int) -> Source:
        meta = pod.get("metadata") or {}
        container = container_of(pod)
        return Source(
            pod=str(meta.get("name")),
            uid=str(meta.get("uid")),
            container=container,
            prefix=prefix(pod),
            group=pod_group,
            started=started(pod, container),
        )

    chosen = []
    for pod in pods:
        found = _labels(pod)
        if found.get(labels.ROLE) != labels.ROLE_WORKER:
            continue
        try:
            index, pod_group = int(found[labels.INDEX]), int(found.get(labels.RESTART, "0"))
        except (KeyError, ValueError):
            continue
        if pod_group == group and (worker is None or index == worker):
            chosen.append((index, source(pod, pod_group)))
    if not chosen and (training.get("status") or {}).get("phase") == Phase.PREPARING.value:
        for pod in pods:
            found = _labels(pod)
            if found.get(labels.ROLE) == labels.ROLE_PREPARE:
                index = int(found.get(labels.JOB_COMPLETION_INDEX, "0") or 0)
                chosen.append((index, source(pod, group)))
    return [s for _, s in sorted(chosen, key=lambda item: (item[0], item[1].pod))]


def restart_reason(training: Obj, events: Sequence[Obj]) -> str:
    """Why the group was replaced: status.message while the training is Restarting, else the
    newest Restarting event's cause.

    >>> restart_reason({"status": {"phase": "Restarting", "message": "restart 1/3: why"}}, [])
    'restart 1/3: why'
    >>> restart_reason({"status": {"phase": "Running"}}, [{"reason": "Restarting",
    ...     "message": "restarting all 2 workers (disruption 1): node lost"}])
    'disruption 1: node lost'
    """
    status = training.get("status") or {}
    if status.get("phase") == Phase.RESTARTING.value and status.get("message"):
        return one_line(status["message"])
    said = [e for e in events if e.get("reason") == "Restarting"]
    if not said:
        return one_line(status.get("message"))
    text = one_line(max(said, key=event_time).get("message"))
    found = RESTARTING.match(text)
    return f"{found[1]}: {found[2]}" if found else text


def marker(group: int, reason: str) -> str:
    """The line printed where one group's logs end and the next one's begin.

    >>> marker(2, "restart 2/3: worker 0 (b-worker-0) failed: exit code 1")
    '--- group restart 2: restart 2/3: worker 0 (b-worker-0) failed: exit code 1 ---'
    """
    reason = clip(reason, MARKER_REASON)
    return (
        f"--- group restart {group}: {reason} ---" if reason else f"--- group restart {group} ---"
    )


def lines_of(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines (without their newline, decoded as UTF-8) of a stream of byte chunks."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


def read_log(
    reader: Reader, source: Source, follow: bool, since: int | None, tail: int | None
) -> Iterator[str]:
    """The lines of `source`'s log; with `follow` until its container ends."""
    response: Any = reader.core.read_namespaced_pod_log(
        source.pod,
        reader.namespace,
        container=source.container,
        follow=follow,
        since_seconds=since,
        tail_lines=tail,
        _preload_content=False,
    )
    try:
        yield from lines_of(response.stream(amt=None, decode_content=True))
    finally:
        response.release_conn()


def show(
    reader: Reader, worker: int | None, since: int | None, tail: int | None, out: TextIO
) -> None:
    """Print the logs of the current group's selected workers as they are now, one pod after
    the other (prefixed when `worker` is None: every worker). NoLogsError without any."""
    training = reader.training()
    chosen = [s for s in sources(training, reader.pods(), worker) if s.started]
    if not chosen:
        raise NoLogsError(nothing_to_show(training, worker))
    for source in chosen:
        lead = source.prefix if worker is None or source.prefix.startswith("[prepare") else ""
        for line in read_log(reader, source, False, since, tail):
            out.write(f"{lead}{line}\n")
    out.flush()


def nothing_to_show(training: Obj, worker: int | None) -> str:
    """Why there is no log to show (for NoLogsError).

    >>> nothing_to_show({"metadata": {"name": "b"}, "status": {"phase": "Pending"}}, 0)
    'BertTraining b has no started pod of worker 0 in its current group (phase Pending)'
    """
    who = "any worker" if worker is None else f"worker {worker}"
    phase = (training.get("status") or {}).get("phase") or Phase.PENDING.value
    name = (training.get("metadata") or {}).get("name")
    return f"BertTraining {name} has no started pod of {who} in its current group (phase {phase})"


class Follower:
    """`--follow`: one thread per pod stream, lines queued to the caller's thread, which alone
    writes to `out` and decides, each POLL_SECONDS, which pods to stream next."""

    def __init__(
        self,
        reader: Reader,
        worker: int | None,
        since: int | None,
        tail: int | None,
        out: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.reader, self.worker, self.out, self.clock = reader, worker, out, clock
        self.first: tuple[int | None, int | None] | None = (since, tail)
        self.lines: queue.Queue[str] = queue.Queue()
        self.streams: dict[str, tuple[Source, threading.Thread]] = {}
        #: Streams that could not open yet (the container was not ready for its logs).
        self.retry: set[str] = set()
        self.tries: dict[str, int] = {}

    def _stream(self, source: Source, since: int | None, tail: int | None) -> None:
        lead = source.prefix if self.worker is None or source.prefix.startswith("[prep") else ""
        try:
            for line in read_log(self.reader, source, True, since, tail):
                self.lines.put(f"{lead}{line}\n")
        except ApiException as error:
            if error.status == 400:  # "container ... is waiting to start": later
                self.retry.add(source.uid)
        except Exception:  # a stream cut with its pod (deleted, node gone): nothing more to read
            pass

    def _start(self, source: Source) -> None:
        since, tail = self.first or (None, None)
        thread = threading.Thread(target=self._stream, args=(source, since, tail), daemon=True)
        self.streams[source.uid] = (source, thread)
        thread.start()

    def _drain(self, until: float | None) -> None:
        """Write the queued lines as they come until the clock reads `until` (None: until the
        queue is empty), flushing whenever the queue runs dry."""
        while until is None or (wait := until - self.clock()) > 0:
            try:
                line = self.lines.get_nowait() if until is None else self.lines.get(timeout=wait)
            except queue.Empty:
                break
            self.out.write(line)
            if self.lines.empty():
                self.out.flush()
        self.out.flush()

    def run(self) -> None:
        """Follow until the training finished and every stream ended; NoLogsError if it
        finished without a pod to show."""
        group: int | None = None
        pending: str | None = None  # a marker waiting for the old group's streams to end
        held = 0.0  # since when
        while True:
            try:
                training, pods = self.reader.training(), self.reader.pods()
            except ApiException as error:
                if error.status != 404 or group is None:
                    raise
                training, pods = {"status": {"phase": Phase.FAILED.value}}, []  # deleted
            now = current_group(training, pods)
            if group is None:
                group = now
            elif now > group:
                group = now
                pending = marker(now, restart_reason(training, self.reader.events()))
                held = self.clock()
            chosen = sources(training, pods, self.worker)
            for uid in list(self.retry):  # opened too early: open again, a few times
                self.retry.discard(uid)
                self.tries[uid] = self.tries.get(uid, 0) + 1
                if self.tries[uid] <= MAX_TRIES:
                    self.streams.pop(uid, None)
            alive = [s for s, t in self.streams.values() if t.is_alive()]
            # The new group's logs wait (the kubelet keeps them) until the old group's end.
            if pending and (
                not any(s.group < group for s in alive) or self.clock() - held > HOLD_SECONDS
            ):
                self._drain(None)
                self.out.write(pending + "\n")
                pending = None
            if pending is None:
                for source in chosen:
                    if source.started and source.uid not in self.streams:
                        self._start(source)
            self.first = None
            finished = (training.get("status") or {}).get("phase") in FINISHED_PHASES
            streaming = any(t.is_alive() for _, t in self.streams.values())
            self._drain(self.clock() + POLL_SECONDS if streaming or not finished else None)
            if (
                finished
                and not self.retry
                and not any(t.is_alive() for _, t in self.streams.values())
            ):
                self._drain(None)
                if not self.streams:
                    raise NoLogsError(nothing_to_show(training, self.worker))
                return
