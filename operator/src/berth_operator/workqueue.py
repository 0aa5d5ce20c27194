"""An asyncio work queue of object keys, as client-go's delaying work queue behaves.

* A key added many times before a worker takes it is handed out once (bursts coalesce).
* A key is never handed to two workers at once: added while being processed, it is marked
  dirty and handed out again after `done`.
* `add_at(key, when)` hands the key out at `when` (loop time) at the latest; an earlier
  `add` or due time wins, a later one is ignored while an earlier one is pending.

    >>> import asyncio
    >>> async def demo():
    ...     queue = WorkQueue()
    ...     for _ in range(3):
    ...         queue.add("ml/bert")
    ...     key = await queue.get()
    ...     queue.add("ml/bert")           # while processing: handed out again after done
    ...     queue.done(key)
    ...     return key, await queue.get(), len(queue)
    >>> asyncio.run(demo())
    ('ml/bert', 'ml/bert', 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Coalescing FIFO of keys with per-key due times (loop time of `asyncio`)."""

    def __init__(self) -> None:
        self._ready: deque[K] = deque()  # FIFO of keys to hand out now
        self._queued: set[K] = set()  # in _ready
        self._processing: set[K] = set()
        self._dirty: set[K] = set()  # added while processing
        self._due: dict[K, float] = {}  # earliest pending due time per key
        self._timers: list[tuple[float, int, K]] = []  # heap over _due (stale entries skipped)
        self._counter = 0
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: K) -> None:
        """Hand `key` to a worker as soon as possible (once, however often it is added)."""
        self._due.pop(key, None)
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._wakeup.set()

    def add_at(self, key: K, when: float) -> None:
        """Hand `key` out at loop time `when` at the latest (now if `when` has passed)."""
        if when <= asyncio.get_running_loop().time():
            self.add(key)
            return
        if key in self._queued or self._due.get(key, when + 1) <= when:
            return  # an earlier hand-out is already pending
        self._due[key] = when
        self._counter += 1
        heapq.heappush(self._timers, (when, self._counter, key))
        self._wakeup.set()

    def due(self, key: K) -> float | None:
        """The pending due time of `key`, if any (for tests and logs)."""
        return self._due.get(key)

    def forget(self, key: K) -> None:
        """Drop a pending due time of `key` (the object is gone)."""
        self._due.pop(key, None)

    def done(self, key: K) -> None:
        """A worker finished `key`: hand it out again if it was added meanwhile."""
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        """Wake every waiting `get`, which then raises `QueueClosed`."""
        self._closed = True
        self._wakeup.set()

    def _release_due(self) -> float | None:
        """Move keys whose time has come to the ready list; the next due time, if any."""
        now = asyncio.get_running_loop().time()
        while self._timers:
            when, _, key = self._timers[0]
            if self._due.get(key) != when:  # superseded or forgotten
                heapq.heappop(self._timers)
                continue
            if when > now:
                return when
            heapq.heappop(self._timers)
            self.add(key)
        return None

    async def get(self) -> K:
        """The next key to process; call `done(key)` when finished with it."""
        while True:
            if self._closed:
                raise QueueClosed
            next_due = self._release_due()
            if self._ready:
                key = self._ready.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                if self._ready:
                    self._wakeup.set()  # let another waiting worker take the next one
                return key
            self._wakeup.clear()
            timeout = None
            if next_due is not None:
                timeout = max(0.0, next_due - asyncio.get_running_loop().time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)


class QueueClosed(Exception):
    """The queue was closed: workers exit."""
