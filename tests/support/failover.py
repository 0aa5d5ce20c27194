"""Two operator replicas with leader election, and how long a takeover takes.

`measure_failover` is what bench scripts call (the caller owns the namespace, which must exist
with the CRD installed); `tests/integration/test_operator_leader_election.py` uses the same
pieces to check who writes.

    failover = measure_failover(api, "bench-ha", Path("/tmp/ha"))
    print(failover.lease_s, failover.reconcile_s)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from berth_operator.settings import DEFAULT_LEASE
from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.waiting import wait_for

#: Flags of every replica: elect a leader among the replicas watching the same namespace.
LEADER_ELECT = ("--leader-elect",)


def holder(api: client.ApiClient, namespace: str, lease: str = DEFAULT_LEASE) -> str:
    """The Lease's holderIdentity ("" when there is no Lease or nobody holds it)."""
    try:
        found = client.CoordinationV1Api(api).read_namespaced_lease(lease, namespace)
    except ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(found.spec.holder_identity or "")


def start_replica(
    namespace: str,
    workdir: Path,
    name: str,
    extra: tuple[str, ...] = (),
    kubeconfig: Path | None = None,
) -> Operator:
    """Replica `name` (its POD_NAME, so the Lease's holder starts with `name_`), logging to
    `workdir/<name>.log`."""
    log = workdir / f"{name}.log"
    return Operator(
        namespace, log, [*LEADER_ELECT, *extra], kubeconfig, env={"POD_NAME": name}
    ).start()


def wait_leader(api: client.ApiClient, namespace: str, name: str, timeout: float = 60) -> None:
    wait_for(
        lambda: holder(api, namespace).startswith(f"{name}_"),
        timeout=timeout,
        what=f"replica {name} holding the Lease",
    )


def workers_created(trainings: Trainings, name: str, workers: int) -> bool:
    """The training's workers all exist and its status says so (phase Starting or later)."""
    status = trainings.status(name)
    return status.get("phase") in {"Starting", "Running"} and len(trainings.pods(name)) == workers


@dataclasses.dataclass(frozen=True)
class Failover:
    """Seconds from SIGKILL of the leader until the other replica holds the Lease, and until
    a training created right after the kill has its workers."""

    lease_s: float
    reconcile_s: float


def measure_failover(
    api: client.ApiClient,
    namespace: str,
    workdir: Path,
    extra: tuple[str, ...] = (),
    workers: int = 2,
) -> Failover:
    """Start replicas `a` and `b` (a first, so it leads; `extra`: more flags, e.g. shorter
    leader election timings), let `a` reconcile a training, SIGKILL it, create another training
    and time the takeover. Both replicas are stopped and the trainings deleted after."""
    trainings = Trainings(api, namespace)
    replicas = [start_replica(namespace, workdir, "a", extra)]
    try:
        wait_leader(api, namespace, "a")
        replicas.append(start_replica(namespace, workdir, "b", extra))
        wait_for(
            lambda: "is held by a_" in replicas[1].log.read_text(),
            timeout=60,
            what="replica b standing by",
        )
        trainings.create(manifest("before-failover", workers=workers))
        wait_for(
            lambda: workers_created(trainings, "before-failover", workers),
            timeout=60,
            what="the leader reconciling before-failover",
        )
        killed = time.monotonic()
        replicas[0].kill()
        trainings.create(manifest("after-failover", workers=workers))
        wait_leader(api, namespace, "b", timeout=120)
        lease_s = time.monotonic() - killed
        wait_for(
            lambda: workers_created(trainings, "after-failover", workers),
            timeout=120,
            interval=0.1,
            what="the new leader reconciling after-failover",
        )
        return Failover(lease_s=lease_s, reconcile_s=time.monotonic() - killed)
    finally:
        trainings.custom.delete_collection_namespaced_custom_object(
            "berth.dev", "v1alpha1", namespace, "berttrainings"
        )
        for replica in replicas:
            replica.stop()
