"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

Replicas campaign for one Lease; the one holding it runs kopf, the others only read the Lease
(one GET per retry period) and write nothing until it expires. The holder renews it every retry
period; a holder that has not renewed within the renew deadline stops (the process exits 1, so
its Deployment restarts it as a candidate). A candidate takes the Lease over when it has seen
the same record for the Lease's `leaseDurationSeconds` on its *own* monotonic clock, so clocks
of different nodes never have to agree.

Fencing: `Elector.fence` raises unless the last successful renewal (taken when its request was
sent) is younger than the renew deadline; `berth_operator.k8s.Cluster` calls it before every
write. A leader paused past its deadline (SIGSTOP, a frozen VM) and resumed therefore writes
nothing through `Cluster` before it notices and exits, while a candidate takes over only after
the longer lease duration. kopf's own writes (events, finalizers, annotations) do not go
through `Cluster`: they are the gap (docs/operator.md, "High availability").

Why not `kubernetes.leaderelection`: it runs the leader's work in a thread, judges every
deadline on the wall clock and exposes no "renewed at" to fence writes with; here the decision
is a pure function (`decide`) over monotonic times, and the I/O is a thin asyncio loop beside
kopf's.

    >>> lease = Observed(holder="b_1", duration=15, resource_version="7", seen_at=100.0)
    >>> decide(lease, me="a_1", now=110.0), decide(lease, me="a_1", now=115.0)
    (<Action.WAIT: 'wait'>, <Action.ACQUIRE: 'acquire'>)
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

#: What controller-runtime's manager uses.
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 15.0, 10.0, 2.0
#: Exit status of a leader that lost its Lease (controller-runtime exits 1 too).
LOST_EXIT_CODE = 1
#: Failures of one Lease call that the next retry may not meet.
TRANSIENT = (ApiException, urllib3.exceptions.HTTPError)


class Action(enum.Enum):
    """What a replica does next with the Lease."""

    CREATE = "create"  # there is no Lease: create it, holding it
    ACQUIRE = "acquire"  # free or expired: take it over (an update at its resourceVersion)
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # held by another replica that renews it


@dataclasses.dataclass(frozen=True)
class Observed:
    """A Lease record as one replica saw it: `seen_at` is its own monotonic time when the
    record (resourceVersion) last changed."""

    holder: str  # "" when released
    duration: float  # the record's leaseDurationSeconds
    resource_version: str
    seen_at: float


@dataclasses.dataclass(frozen=True)
class Timings:
    """Lease duration > renew deadline > retry period (seconds)."""

    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD


def decide(lease: Observed | None, me: str, now: float) -> Action:
    """What replica `me` does at monotonic time `now`, having observed `lease` (None: there is
    none). Another holder's Lease has expired once its record has not changed for its duration
    since this replica saw it change."""
    if lease is None:
        return Action.CREATE
    if lease.holder == me:
        return Action.RENEW
    if not lease.holder or now >= lease.seen_at + lease.duration:
        return Action.ACQUIRE
    return Action.WAIT


def may_write(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """Whether a leader whose last renewal was sent at `renewed_at` (None: never) may still
    write at `now`: before the renew deadline, while no other replica can have taken over."""
    return renewed_at is not None and now - renewed_at < renew_deadline


def observe(record: Mapping[str, Any] | None, last: Observed | None, now: float) -> Observed | None:
    """The Observed of a Lease object just read; `seen_at` moves only when it changed."""
    if record is None:
        return None
    spec = record.get("spec") or {}
    version = str(record["metadata"]["resourceVersion"])
    if last is not None and last.resource_version == version:
        return last
    return Observed(
        holder=spec.get("holderIdentity") or "",
        duration=float(spec.get("leaseDurationSeconds") or 0),
        resource_version=version,
        seen_at=now,
    )


def identity(env: Mapping[str, str]) -> str:
    """`<pod name>_<random>`: the pod name (POD_NAME, else the host name) says which pod
    holds the Lease; the suffix tells a restarted container from its previous life."""
    return f"{env.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def micro_time(wall: float) -> str:
    """A Lease MicroTime (RFC 3339, microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NotLeaderError(Exception):
    """A write was refused: this replica does not (any longer surely) hold the Lease."""


class Elector:
    """One replica's campaign for the Lease `namespace/name`; see the module docstring."""

    def __init__(
        self,
        namespace: str,
        name: str,
        me: str,
        timings: Timings | None = None,
        api_client: kubernetes.client.ApiClient | None = None,
    ) -> None:
        self.namespace, self.name, self.me = namespace, name, me
        self.timings = timings or Timings()
        self.leases = kubernetes.client.CoordinationV1Api(api_client)
        self.observed: Observed | None = None
        self.record: dict[str, Any] | None = None  # the Lease as last read or written
        self.renewed_at: float | None = None  # monotonic time the last renewal was sent

    def fence(self) -> None:
        """Raise NotLeaderError unless this replica may write now (see `may_write`)."""
        if not may_write(self.renewed_at, time.monotonic(), self.timings.renew_deadline):
            raise NotLeaderError(
                f"not writing: {self.me} has not renewed Lease {self.namespace}/{self.name} "
                f"within {self.timings.renew_deadline:g}s"
            )

    async def acquire(self) -> None:
        """Return once this replica holds the Lease; until then only read it."""
        holder = None
        while True:
            try:
                if await self._try():
                    logger.info("acquired Lease %s/%s as %s", self.namespace, self.name, self.me)
                    return
            except TRANSIENT as error:
                logger.warning("reading Lease %s/%s: %s", self.namespace, self.name, error)
            if self.observed is not None and self.observed.holder != holder:
                holder = self.observed.holder
                logger.info("Lease %s/%s is held by %s", self.namespace, self.name, holder or "-")
            await asyncio.sleep(self.timings.retry_period)

    async def keep(self) -> None:
        """Renew the Lease every retry period; return when it is lost: not renewed within
        the renew deadline, or found held by another replica."""
        while True:
            left = (self.renewed_at or 0) + self.timings.renew_deadline - time.monotonic()
            await asyncio.sleep(max(0.0, min(self.timings.retry_period, left)))
            # After the sleep: a process paused meanwhile must not send even the renewal.
            if not may_write(self.renewed_at, time.monotonic(), self.timings.renew_deadline):
                return
            try:
                if await self._renew():
                    continue
            except TRANSIENT as error:
                logger.warning("renewing Lease %s/%s: %s", self.namespace, self.name, error)
                continue
            if self.observed is not None and self.observed.holder not in ("", self.me):
                holder = self.observed.holder
                logger.error("Lease %s/%s taken by %s", self.namespace, self.name, holder)
                return

    async def release(self) -> None:
        """Give the Lease up (a graceful stop), so a candidate takes over at its next retry
        instead of after the lease duration, as client-go's ReleaseOnCancel does."""
        if self.record is None or not may_write(
            self.renewed_at, time.monotonic(), self.timings.renew_deadline
        ):
            return
        spec = {**self.record["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
        try:
            await self._write("replace", {**self.record, "spec": spec})
        except TRANSIENT as error:
            logger.warning("releasing Lease %s/%s: %s", self.namespace, self.name, error)
        self.renewed_at = None

    async def _renew(self) -> bool:
        """Renew from the record last written (one request); on a conflict read the Lease and
        decide again. Whether this replica holds it now."""
        if self.record is not None:
            try:
                return await self._take(self.record, transition=False)
            except ApiException as error:
                if error.status != 409:
                    raise
        return await self._try()

    async def _try(self) -> bool:
        """One read of the Lease and the `decide` step; whether this replica holds it now."""
        record = await self._read()
        self.observed = observe(record, self.observed, time.monotonic())
        action = decide(self.observed, self.me, time.monotonic())
        try:
            if action is Action.CREATE:
                return await self._create()
            if action is Action.WAIT:
                return False
            assert record is not None  # decide returns CREATE otherwise
            return await self._take(record, transition=action is Action.ACQUIRE)
        except ApiException as error:
            if error.status == 409:  # another replica was quicker: decide again next time
                return False
            raise

    async def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec({}, transition=True),
        }
        await self._write("create", body)
        return True

    async def _take(self, record: Mapping[str, Any], transition: bool) -> bool:
        """Write ourselves into `record` at its resourceVersion (a conflict raises 409)."""
        spec = self._spec(record.get("spec") or {}, transition)
        await self._write("replace", {**record, "spec": spec})
        return True

    def _spec(self, old: Mapping[str, Any], transition: bool) -> dict[str, Any]:
        now = micro_time(time.time())
        spec = {
            **old,
            "holderIdentity": self.me,
            "leaseDurationSeconds": round(self.timings.lease_duration),
            "renewTime": now,
        }
        if transition:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (
                1 if old.get("holderIdentity") else 0
            )
        return spec

    async def _read(self) -> dict[str, Any] | None:
        try:
            response: Any = await asyncio.to_thread(
                self.leases.read_namespaced_lease,
                self.name,
                self.namespace,
                _preload_content=False,
                _request_timeout=self.timings.renew_deadline / 2,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(response.data)
        return found

    async def _write(self, verb: str, body: dict[str, Any]) -> None:
        """Create or replace the Lease; on success remember it, and when it names us, that
        it was renewed at the time the request was sent."""
        sent = time.monotonic()
        if verb == "create":
            call: Callable[..., Any] = self.leases.create_namespaced_lease
            args: tuple[Any, ...] = (self.namespace, body)
        else:
            call, args = self.leases.replace_namespaced_lease, (self.name, self.namespace, body)
        response = await asyncio.to_thread(
            call, *args, _preload_content=False, _request_timeout=self.timings.renew_deadline / 2
        )
        self.record = json.loads(response.data)
        if self.record is not None and self.record["spec"].get("holderIdentity") == self.me:
            self.renewed_at = sent
            self.observed = observe(self.record, self.observed, sent)


async def lead(elector: Elector, operate: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `operate()` (kopf) while holding the Lease (once `elector.acquire()` returned).
    Losing it exits the process at once (`LOST_EXIT_CODE`): kopf's tasks and threads are not
    waited for, since another replica may be acting already. When `operate` returns (a graceful
    stop), the Lease is released."""
    keeping = asyncio.create_task(elector.keep(), name="lease renewal")
    operating = asyncio.create_task(operate(), name="operator")
    await asyncio.wait({keeping, operating}, return_when=asyncio.FIRST_COMPLETED)
    if keeping.done():
        logger.critical(
            "lost Lease %s/%s (not renewed within %gs): exiting",
            elector.namespace,
            elector.name,
            elector.timings.renew_deadline,
        )
        logging.shutdown()
        os._exit(LOST_EXIT_CODE)
    keeping.cancel()
    await elector.release()
    operating.result()  # its error, if it failed
