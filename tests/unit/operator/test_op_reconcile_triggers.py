"""What wakes a training's reconcile: the work queue, the expectations and the due times."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from berth_operator.expectations import Expectations, at_least
from berth_operator.policy import next_due
from berth_operator.progress import identity_from_metrics
from berth_operator.workers import format_time
from berth_operator.workqueue import QueueClosed, WorkQueue
from berth_trainer.observability import identity
from tests.unit.operator.factories import T0, make_pod, make_training, running_group


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- WorkQueue ------------------------------------------------------------------------------


def test_queue_coalesces_a_burst_and_keeps_order() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "c", "b", "a"):
            queue.add(key)
        out = [await queue.get() for _ in range(3)]
        assert len(queue) == 0
        return out

    assert run(scenario()) == ["a", "b", "c"]


def test_queue_never_hands_out_a_key_being_processed() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        first = await queue.get()
        queue.add("a")  # changed while a worker is on it
        queue.add("b")
        second = await queue.get()  # "a" is busy: "b" comes first
        assert len(queue) == 0
        queue.done(first)  # now "a" is due again, once
        third = await queue.get()
        return [first, second, third]

    assert run(scenario()) == ["a", "b", "a"]


def test_queue_due_times_earliest_wins_and_add_overrides() -> None:
    async def scenario() -> tuple[list[str], float | None]:
        loop = asyncio.get_running_loop()
        queue: WorkQueue[str] = WorkQueue()
        now = loop.time()
        queue.add_at("late", now + 0.2)
        queue.add_at("late", now + 30)  # later than pending: ignored
        queue.add_at("soon", now + 0.05)
        queue.add_at("now", now + 30)
        queue.add("now")  # an event: immediately, and the timer is dropped
        order = [await queue.get() for _ in range(3)]
        return order, queue.due("now")

    order, due = run(scenario())
    assert order == ["now", "soon", "late"]
    assert due is None


def test_queue_forget_drops_a_pending_due_time_and_close_wakes_workers() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue: WorkQueue[str] = WorkQueue()
        queue.add_at("gone", loop.time() + 0.05)
        queue.forget("gone")
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0.15)
        assert not waiter.done()  # the forgotten due time never fires
        queue.close()
        with pytest.raises(QueueClosed):
            await waiter

    run(scenario())


# -- Expectations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seen", "wanted", "ok"),
    [("42", "42", True), ("43", "42", True), ("41", "42", False), (None, "1", False),
     ("abc", "abc", True), ("abd", "abc", False)],
)  # fmt: skip
def test_resource_version_at_least(seen: str | None, wanted: str, ok: bool) -> None:
    assert at_least(seen, wanted) is ok


def _pods_with_uids(restart: int = 0, terminating: bool = False) -> list[dict[str, Any]]:
    pods = []
    for i, pod in enumerate(running_group(make_training(), restart=restart)):
        pod["metadata"]["uid"] = f"uid-{restart}-{i}"
        if terminating:
            pod["metadata"]["deletionTimestamp"] = format_time(T0)
        pods.append(pod)
    return pods


@pytest.mark.parametrize(
    ("expected", "pods", "met"),
    [
        (Expectations(created=frozenset({"bert-worker-0"})), [], False),
        (Expectations(created=frozenset({"bert-worker-0"})), _pods_with_uids(), True),
        (Expectations(deleted=frozenset({"uid-0-1"})), _pods_with_uids(), False),
        (Expectations(deleted=frozenset({"uid-0-1"})), _pods_with_uids(terminating=True), True),
        (Expectations(deleted=frozenset({"uid-0-1"})), [], True),
        (Expectations(resource_version="7"), [], False),  # the training shows "5"
    ],
)
def test_expectations_met_by_the_cache(
    expected: Expectations, pods: list[dict[str, Any]], met: bool
) -> None:
    training = make_training()
    training["metadata"]["resourceVersion"] = "5"
    assert expected.met(training, pods) is met


def test_expectation_of_a_deleted_training() -> None:
    gone = Expectations(training_gone=True)
    assert not gone.met(make_training(), [])
    assert gone.met(None, [])
    assert Expectations(resource_version="9").met(None, [])  # nothing left to wait for
    assert Expectations().empty and not gone.empty


@pytest.mark.parametrize(
    ("expected", "workload", "met"),
    [
        (Expectations(workload_created=True), None, False),
        (Expectations(workload_created=True), {"metadata": {"resourceVersion": "3"}}, True),
        (Expectations(workload_version="4"), {"metadata": {"resourceVersion": "3"}}, False),
        (Expectations(workload_version="4"), {"metadata": {"resourceVersion": "4"}}, True),
        (Expectations(workload_version="4"), None, False),
    ],
)
def test_expectations_of_the_kueue_workload(
    expected: Expectations, workload: dict[str, Any] | None, met: bool
) -> None:
    assert expected.met(make_training(), [], workload) is met
    assert not expected.empty


# -- due times of the time-based rules -------------------------------------------------------


def _started(**run_policy: Any) -> Any:
    return (
        make_training()
        .with_run_policy(**run_policy)
        .with_status(phase="Running", restarts=0, startTime=format_time(T0))
    )


@pytest.mark.parametrize(
    ("training", "pods", "due"),
    [
        (_started(), [], None),  # no time-based rule applies
        (_started(activeDeadlineSeconds=90), [], T0 + timedelta(seconds=90)),
        (
            _started(pendingTimeoutSeconds=30),
            [make_pod(make_training(), 0, "Pending", created=T0 + timedelta(seconds=5))],
            T0 + timedelta(seconds=35),
        ),
        (  # a Pending pod of an older group restart does not count
            _started(pendingTimeoutSeconds=30),
            [make_pod(make_training(), 0, "Pending", restart=1)],
            None,
        ),
        (
            _started(activeDeadlineSeconds=20, pendingTimeoutSeconds=30),
            [make_pod(make_training(), 0, "Pending")],
            T0 + timedelta(seconds=20),
        ),
        (
            _started(ttlSecondsAfterFinished=60, activeDeadlineSeconds=5).with_status(
                phase="Succeeded", completionTime=format_time(T0 + timedelta(seconds=3))
            ),
            [],
            T0 + timedelta(seconds=63),
        ),
        (_started(suspend=True, activeDeadlineSeconds=5).with_status(phase="Suspended"), [], None),
    ],
)
def test_next_due(training: dict[str, Any], pods: list[dict[str, Any]], due: Any) -> None:
    assert next_due(training, pods) == due


# -- the trainer's identity on its metrics endpoint ----------------------------------------------


def test_identity_of_a_metrics_endpoint() -> None:
    text = (
        "# TYPE berth_trainer_info gauge\n"
        'berth_trainer_info{namespace="ml",restart="1",training="bert",worker="0"} 1.0\n'
        "berth_train_step 5.0\n"
    )
    assert identity_from_metrics(text) == identity("ml", "bert", 1, worker=0)
    assert identity_from_metrics(text) != identity("ml", "bert", 0, worker=0)
    assert identity_from_metrics("berth_train_step 5.0\n") is None
