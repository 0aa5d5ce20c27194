"""Two operator replicas with `--leader-elect`: the one holding the Lease acts, the other writes
nothing, and takes over when the leader is killed.

Each replica runs as its own ServiceAccount, whose reads and writes two FlowSchemas count in the
API server (tests/support/apicount.py). Short leader election timings keep the takeover quick;
the defaults are measured by tests/support/failover.py's `measure_failover`.
"""

from __future__ import annotations

import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from berth_operator.leader import LOST_EXIT_CODE
from tests.integration.conftest import Trainings, manifest
from tests.support.apicount import (
    admin_account,
    dispatched,
    flow_schema,
    service_account_kubeconfig,
)
from tests.support.failover import holder, start_replica, wait_leader, workers_created
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

#: Lease 6 s, renew deadline 4 s, retry 1 s: a takeover within about 7 s of the kill.
TIMINGS = (
    "--leader-election-lease-duration",
    "6",
    "--leader-election-renew-deadline",
    "4",
    "--leader-election-retry-period",
    "1",
)
WRITES = ("create", "update", "patch", "delete", "deletecollection")
READS = ("get", "list")


class Counted:
    """A replica's ServiceAccount (cluster-admin) and the FlowSchemas counting its reads and
    its writes."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, tag: str):
        self.account, self.binding = f"replica-{name}", f"{namespace}-replica-{name}"
        self.reads, self.writes = (
            f"berth-test-{tag}-{name}-reads",
            f"berth-test-{tag}-{name}-writes",
        )
        admin_account(api, namespace, self.account, self.binding)
        flows = client.FlowcontrolApiserverV1Api(api)
        flows.create_flow_schema(flow_schema(self.reads, namespace, self.account, READS))
        flows.create_flow_schema(flow_schema(self.writes, namespace, self.account, WRITES))

    def delete(self, api: client.ApiClient) -> None:
        flows = client.FlowcontrolApiserverV1Api(api)
        for schema in (self.reads, self.writes):
            flows.delete_flow_schema(schema)
        client.RbacAuthorizationV1Api(api).delete_cluster_role_binding(self.binding)


@pytest.fixture
def counted(api: client.ApiClient, namespace: str) -> Iterator[dict[str, Counted]]:
    tag = uuid.uuid4().hex[:6]
    replicas = {name: Counted(api, namespace, name, tag) for name in ("a", "b")}
    yield replicas
    for replica in replicas.values():
        replica.delete(api)


@pytest.fixture
def kubeconfigs(
    api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    counted: dict[str, Counted],
    tmp_path: Path,
) -> dict[str, Path]:
    """A kubeconfig of each replica's ServiceAccount."""
    return {
        name: service_account_kubeconfig(
            api, kubeconfig, namespace, replica.account, tmp_path / f"{name}.kubeconfig"
        )
        for name, replica in counted.items()
    }


def test_only_the_leader_writes_and_the_other_takes_over_when_it_dies(
    api: client.ApiClient,
    kubeconfigs: dict[str, Path],
    crd: str,
    namespace: str,
    trainings: Trainings,
    counted: dict[str, Counted],
    tmp_path: Path,
) -> None:
    a = start_replica(namespace, tmp_path, "a", TIMINGS, kubeconfigs["a"])
    replicas = [a]
    try:
        wait_leader(api, namespace, "a")
        b = start_replica(namespace, tmp_path, "b", TIMINGS, kubeconfigs["b"])
        replicas.append(b)
        # b campaigns: it reads the Lease (so its requests are counted)...
        wait_for(lambda: dispatched(counted["b"].reads) > 0, what="replica b reading the Lease")
        # ...and is alive for its liveness probe, though kopf does not run...
        with urllib.request.urlopen(f"http://127.0.0.1:{b.liveness_port}/healthz") as health:
            assert health.status == 200
        assert b.metric("berth_operator_leader") == 0
        trainings.create(manifest("first", workers=2))
        wait_for(lambda: workers_created(trainings, "first", 2), what="a reconciling first")
        # ...while a alone writes: the Lease renewals, workers, status.
        assert dispatched(counted["a"].writes) > 0
        assert dispatched(counted["b"].writes) == 0
        assert "acquired Lease" not in b.log.read_text()

        a.kill()  # SIGKILL: no release, b waits for the Lease to expire
        wait_leader(api, namespace, "b", timeout=30)
        assert b.metric("berth_operator_leader") == 1
        trainings.create(manifest("second", workers=2))
        wait_for(lambda: workers_created(trainings, "second", 2), what="b reconciling second")
        lease = client.CoordinationV1Api(api).read_namespaced_lease("berth-operator", namespace)
        assert lease.spec.lease_transitions == 1
        # A graceful stop gives the Lease up: the next replica need not wait for it to expire.
        b.stop()
        assert b.proc is not None and b.proc.returncode == 0
        assert holder(api, namespace) == ""
    finally:
        for replica in replicas:
            replica.stop()


def test_a_paused_leader_resumes_writing_nothing_and_exits(
    api: client.ApiClient,
    kubeconfigs: dict[str, Path],
    crd: str,
    namespace: str,
    counted: dict[str, Counted],
    tmp_path: Path,
) -> None:
    """SIGSTOP the leader past the lease duration (a frozen VM, a long GC pause): the other
    replica takes over; resumed, the old leader sees it missed its renew deadline and exits 1
    before sending anything, not even a Lease renewal that the API server would refuse."""
    a = start_replica(namespace, tmp_path, "a", TIMINGS, kubeconfigs["a"])
    replicas = [a]
    try:
        wait_leader(api, namespace, "a")
        replicas.append(start_replica(namespace, tmp_path, "b", TIMINGS, kubeconfigs["b"]))
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        try:
            wait_leader(api, namespace, "b", timeout=30)
            writes = dispatched(counted["a"].writes)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        assert a.proc.wait(timeout=30) == LOST_EXIT_CODE
        assert dispatched(counted["a"].writes) == writes
        assert "lost Lease" in a.log.read_text()
    finally:
        for replica in replicas:
            replica.stop()
