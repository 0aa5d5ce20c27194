"""SIGTERM within a grace budget: when it arrived, what saving still fits, and a fast exit.

Kubernetes sends SIGTERM, waits the pod's `terminationGracePeriodSeconds` (GKE Spot VMs: at
most 15 s), then SIGKILLs. A save started that cannot finish in time is wasted work that ends in
a SIGKILL; the restart resumes from the last complete checkpoint either way. So the trainer
saves on SIGTERM only when, by its own measured save times, the save fits what is left:

    >>> budget = GraceBudget(grace_seconds=15.0)
    >>> budget.save_fits(spent=3.0)  # no save measured yet: save as before
    True
    >>> budget.record_save(9.0)
    >>> budget.save_fits(spent=3.0)  # 3 + 9 x 1.25 + 1 > 15
    False
    >>> budget.save_fits(spent=1.0)  # 1 + 9 x 1.25 + 1 <= 15
    True
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time

log = logging.getLogger("berth_trainer")

#: The pod's grace period in seconds; the operator sets it from terminationGracePeriodSeconds.
GRACE_ENV = "BERTH_TERMINATION_GRACE_SECONDS"
#: Kubernetes' default terminationGracePeriodSeconds.
DEFAULT_GRACE_SECONDS = 30.0
#: A save is expected to take up to this many times the slowest of the last saves (a shared
#: disk's speed varies: BERT-large's saves took 9.5-14.1 s on one disk within an hour).
SAVE_MARGIN = 1.25
#: Seconds kept for logging, the termination log and `os._exit` after the save.
EXIT_SECONDS = 1.0
#: How many recent save durations are remembered (their maximum is the estimate).
_SAVES_REMEMBERED = 3


def grace_from_environment() -> float:
    """$BERTH_TERMINATION_GRACE_SECONDS, or Kubernetes' default of 30 s."""
    raw = os.environ.get(GRACE_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_GRACE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number; using %g s", GRACE_ENV, raw, DEFAULT_GRACE_SECONDS)
        return DEFAULT_GRACE_SECONDS


class GraceBudget:
    """The grace period, and this process's measured checkpoint save durations."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._saves: collections.deque[float] = collections.deque(maxlen=_SAVES_REMEMBERED)

    def record_save(self, seconds: float) -> None:
        self._saves.append(seconds)

    def expected_save(self) -> float | None:
        """The slowest recent save (seconds), None before the first."""
        return max(self._saves) if self._saves else None

    def save_fits(self, spent: float) -> bool:
        """Whether a save started `spent` seconds after SIGTERM ends, with the exit, in time
        (always True before any save was measured: nothing to judge by, save as before)."""
        expected = self.expected_save()
        return expected is None or spent + expected * SAVE_MARGIN + EXIT_SECONDS <= (
            self.grace_seconds
        )


class Sigterm:
    """Remembers a SIGTERM and when it arrived.

    Python runs a signal handler only between bytecodes of the main thread, i.e. once the
    training step in flight returns (seconds later for a large model). The arrival time comes
    instead from `signal.set_wakeup_fd`, which the C-level handler writes to at once, read by a
    daemon thread (TensorFlow releases the GIL while a step runs).
    """

    def __init__(self) -> None:
        self.received_at: float | None = None  # time.monotonic()
        signal.signal(signal.SIGTERM, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)  # kept open for the process's life
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(reader,), daemon=True).start()

    @property
    def received(self) -> bool:
        return self.received_at is not None

    def seconds_since(self) -> float:
        """Seconds since the SIGTERM arrived (0 before one)."""
        return 0.0 if self.received_at is None else time.monotonic() - self.received_at

    def _handle(self, *_) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()

    def _watch(self, reader: socket.socket) -> None:
        while data := reader.recv(64):
            if signal.SIGTERM in data and self.received_at is None:
                self.received_at = time.monotonic()


def exit_now(code: int) -> None:
    """Flush the logs and leave with `code` at once, skipping interpreter and TensorFlow
    teardown (1-4 s measured after a SIGTERM save: time a pod's grace period does not have).

    Only for the preempted path, after the checkpoint (if any) and the termination log are
    written: nothing else is left to run.
    """
    for handler in [*log.handlers, *logging.getLogger().handlers]:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to save
            stream.flush()
    os._exit(code)
