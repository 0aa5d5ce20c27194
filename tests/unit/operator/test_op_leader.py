"""Leader election's decisions (`berth_operator.leader`), its fence, and its settings."""

from __future__ import annotations

import time

import kubernetes
import pytest
import urllib3

from berth_operator import leader
from berth_operator.k8s import Cluster, FencedApiClient
from berth_operator.leader import Action, Observed, decide, may_write, observe
from berth_operator.settings import parse_settings

ME, OTHER = "berth-0_aa", "berth-1_bb"


def lease(holder: str = OTHER, duration: float = 15, seen_at: float = 100.0) -> Observed:
    return Observed(holder=holder, duration=duration, resource_version="1", seen_at=seen_at)


@pytest.mark.parametrize(
    ("observed", "now", "action"),
    [
        (None, 100.0, Action.CREATE),  # no Lease yet
        (lease(holder=ME), 100.0, Action.RENEW),  # ours
        (lease(holder=ME), 500.0, Action.RENEW),  # ours even if late: an update at its version
        (lease(), 100.0, Action.WAIT),  # just seen renewed by another
        (lease(), 114.9, Action.WAIT),  # not yet its duration since it last changed
        (lease(), 115.0, Action.ACQUIRE),  # unchanged for its duration: expired
        (lease(duration=1), 101.0, Action.ACQUIRE),  # released leases say 1 s
        (lease(holder=""), 100.0, Action.ACQUIRE),  # released: free at once
    ],
)
def test_decide(observed: Observed | None, now: float, action: Action) -> None:
    assert decide(observed, ME, now) is action


@pytest.mark.parametrize(
    ("renewed_at", "now", "allowed"),
    [
        (None, 100.0, False),  # never held it
        (100.0, 100.0, True),
        (100.0, 109.9, True),
        (100.0, 110.0, False),  # the renew deadline: another replica may take over soon
        (100.0, 130.0, False),  # paused past the lease duration, then resumed
    ],
)
def test_may_write_only_within_the_renew_deadline(
    renewed_at: float | None, now: float, allowed: bool
) -> None:
    assert may_write(renewed_at, now, renew_deadline=10.0) is allowed


def record(version: str, holder: str | None = OTHER) -> dict:
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 15}
    return {"metadata": {"resourceVersion": version}, "spec": spec}


def test_observe_restarts_the_clock_only_when_the_record_changes() -> None:
    first = observe(record("1"), None, now=100.0)
    assert first == Observed(holder=OTHER, duration=15, resource_version="1", seen_at=100.0)
    assert observe(record("1"), first, now=120.0) is first  # no renewal seen: it expires
    assert observe(record("2"), first, now=120.0) == Observed(OTHER, 15, "2", seen_at=120.0)
    assert observe(record("3", holder=None), first, 121.0) == Observed("", 15, "3", 121.0)
    assert observe(None, first, now=130.0) is None


def test_identity_names_the_pod_and_differs_per_process() -> None:
    first, second = (leader.identity({"POD_NAME": "berth-7d9"}) for _ in range(2))
    assert first.startswith("berth-7d9_") and second.startswith("berth-7d9_")
    assert first != second


def unreachable() -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard: nothing answers
    configuration.retries = False
    return configuration


def test_cluster_writes_nothing_past_the_renew_deadline() -> None:
    """A leader paused past its renew deadline refuses every write before it is sent; reads go
    on (here they fail to connect: nothing listens)."""
    elector = leader.Elector("berth", "berth-operator", ME, leader.Timings(15, 10, 2))
    cluster = Cluster(FencedApiClient(elector.fence, unreachable()))
    pod = {"kind": "Pod", "metadata": {"name": "w-0", "namespace": "ml"}}
    elector.renewed_at = time.monotonic() - 10.5
    with pytest.raises(leader.NotLeaderError, match="not renewed"):
        cluster.create(pod)
    with pytest.raises(leader.NotLeaderError):
        cluster.delete_pod("ml", "w-0")
    with pytest.raises(leader.NotLeaderError):
        cluster.patch_status("ml", "bert", {"phase": "Running"})
    with pytest.raises(urllib3.exceptions.HTTPError):  # a read is sent: no fence
        cluster.get_secret_data("ml", "key")
    elector.renewed_at = time.monotonic()  # renewed: writes are sent again
    with pytest.raises(urllib3.exceptions.HTTPError):
        cluster.delete_pod("ml", "w-0")


def test_leader_election_settings() -> None:
    off = parse_settings([], env={})
    assert not off.leader_elect and off.leader_election_namespace is None
    assert off.leader_election == leader.Timings(15, 10, 2)
    flags = parse_settings(
        ["--leader-elect", "-n", "ml", "--leader-election-id", "lock"], env={"POD_NAMESPACE": "ops"}
    )
    assert (flags.leader_election_namespace, flags.leader_election_id) == ("ops", "lock")
    env = {
        "BERTH_LEADER_ELECT": "true",
        "BERTH_LEADER_ELECTION_NAMESPACE": "lease-ns",
        "BERTH_LEADER_ELECTION_LEASE_DURATION": "6",
        "BERTH_LEADER_ELECTION_RENEW_DEADLINE": "4",
        "BERTH_LEADER_ELECTION_RETRY_PERIOD": "1",
    }
    from_env = parse_settings([], env=env)
    assert from_env.leader_elect and from_env.leader_election_namespace == "lease-ns"
    assert from_env.leader_election == leader.Timings(6, 4, 1)
    # Outside a pod, the first watched namespace holds the Lease.
    assert parse_settings(["--leader-elect", "-n", "ml"], env={}).leader_election_namespace == "ml"


@pytest.mark.parametrize(
    "argv",
    [
        ["--leader-elect"],  # cluster-wide, outside a pod: no namespace for the Lease
        ["--leader-elect", "-n", "ml", "--leader-election-renew-deadline", "15"],
        ["--leader-elect", "-n", "ml", "--leader-election-retry-period", "10"],
        ["--leader-elect", "-n", "ml", "--leader-election-lease-duration", "0"],
    ],
)
def test_leader_election_settings_refuse_what_cannot_work(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv, env={})
