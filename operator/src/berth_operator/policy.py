"""The reconcile decision: (training, observed worker pods, now) → a Plan. Pure.

Everything the decision needs lives in the cluster: the phase and the restart counts in
`status`, the group a pod belongs to in its `berth.dev/restart` label. So the operator (or
`berth run`) can be restarted at any point and the next pass picks up where the last left.

One worker failing breaks the collective for all, so a retryable failure restarts the whole
group: every pod of the current group is deleted, `status.restarts` goes up by one and, once
the old pods are gone, a fresh group is created with the next group number (`restarts +
disruptions`). A disruption — a worker preempted, evicted, drained (its `DisruptionTarget`
condition) or on a node that is lost — restarts the group the same way but counts in
`status.disruptions` instead, against `runPolicy.disruptionLimit`, not `backoffLimit`. Pods on a
dead node are deleted with grace 0 (`Plan.force_delete`): no kubelet will ever confirm a graceful
deletion there, and the next group's pods need their names.

    >>> from datetime import UTC, datetime
    >>> training = {"metadata": {"name": "b", "namespace": "ml", "generation": 1},
    ...             "spec": {"vocabulary": "v", "data": {"train": "d"}, "output": {"dir": "o"},
    ...                      "checkpoint": {"dir": "c"}, "workers": 2}}
    >>> plan = reconcile(training, [], datetime(2025, 1, 1, tzinfo=UTC))
    >>> plan.create, plan.status["phase"]
    ([0, 1], 'Starting')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from berth_operator import kueue, nodes, podpolicy, prepare, progress
from berth_operator.api import (
    FINISHED_PHASES,
    BertTrainingSpec,
    CleanPodPolicy,
    ConditionType,
    Phase,
    RestartPolicy,
    RunPolicy,
)
from berth_operator.builders import build_worker_pod, parse_spec, worker_name
from berth_operator.conditions import get_condition, set_condition
from berth_operator.nodes import NodeHealth
from berth_operator.workers import WorkerState, format_time, observe_pod, parse_time
from berth_trainer.exit_codes import is_retryable

#: Status fields the reconcile pass owns (progress and validation belong to the metrics
#: poller, but for the final figures: FINAL_STATUS_FIELDS).
OWNED_STATUS_FIELDS = (
    "phase",
    "conditions",
    "workers",
    "restarts",
    "disruptions",
    "startTime",
    "completionTime",
    "observedGeneration",
    "message",
    "queue",
    "prepare",
)
#: Status fields a pass writes only when it sets them: the final figures of a succeeded
#: training (while it runs, they belong to the metrics poller).
FINAL_STATUS_FIELDS = ("progress", "validation")
#: Seconds the other workers get to exit on their own once worker 0 succeeded, before
#: cleanPodPolicy Running deletes those still running (and their logs with them).
FINISH_GRACE_SECONDS = 60
#: Grace period of the surviving workers when a node was lost: they cannot agree on a step to
#: checkpoint at with a dead peer, so their SIGTERM buys nothing but the wait.
LOST_NODE_GRACE_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the BertTraining."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass
class Plan:
    """What to do in this pass. Apply `delete` and `force_delete`, then `create`, then write
    `status`."""

    status: dict[str, Any]
    #: The group number (`restarts + disruptions`; the pods' `berth.dev/restart` label).
    restart: int
    create: list[int] = dataclasses.field(default_factory=list)
    delete: list[str] = dataclasses.field(default_factory=list)
    #: Pods on a dead node: deleted with grace 0 (`berth_operator.nodes`).
    force_delete: list[str] = dataclasses.field(default_factory=list)
    #: Grace period in seconds for `delete` (None: the pods' own terminationGracePeriodSeconds).
    delete_grace: int | None = None
    events: list[Event] = dataclasses.field(default_factory=list)
    delete_training: bool = False
    #: Kueue (`berth_operator.kueue`): create the Workload; merge-patch its status; merge-patch
    #: the Workload itself (spec.active, its finalizer); delete it (out of sync with the spec).
    create_workload: bool = False
    workload_status: dict[str, Any] | None = None
    workload_patch: dict[str, Any] | None = None
    delete_workload: bool = False
    #: data.prepare (`berth_operator.prepare`): create the prepare Job; delete it (by name)
    #: while it runs: suspended, Kueue took the admission back, or the training failed.
    create_prepare_job: bool = False
    delete_prepare_job: str | None = None


def should_retry(policy: str, worker: WorkerState) -> bool:
    """Whether `policy` restarts the group after `worker` failed.

    A failure without an exit code (eviction, a deleted pod, a lost node) is an infrastructure
    failure and retryable under ExitCode.

    >>> w = WorkerState("p", 0, 0, "Failed", False, False, None, None, 2, "Error", None)
    >>> should_retry("OnFailure", w), should_retry("ExitCode", w), should_retry("Never", w)
    (True, False, False)
    """
    if policy == RestartPolicy.NEVER.value:
        return False
    if policy == RestartPolicy.ON_FAILURE.value:
        return True
    return worker.exit_code is None or is_retryable(worker.exit_code)


def failure_verdict(
    run_policy: RunPolicy, failed: WorkerState, restarts: int, reason: str, why: str
) -> tuple[str, str] | None:
    """(reason, message) the training fails with after `failed`, or None when the group
    restarts: the restart policy rules it out, or `restarts` reached the backoff limit.

    >>> w = WorkerState("p", 0, 0, "Failed", False, False, None, None, 137, "Error", None)
    >>> failure_verdict(RunPolicy(backoffLimit=1), w, 1, "WorkerFailed", "p exited 137")
    ('BackoffLimitExceeded', 'runPolicy.backoffLimit 1 reached: p exited 137')
    """
    if not should_retry(run_policy.restart_policy, failed):
        return reason, f"{why} (runPolicy.restartPolicy {run_policy.restart_policy})"
    if restarts >= run_policy.backoff_limit:
        return (
            "BackoffLimitExceeded",
            f"runPolicy.backoffLimit {run_policy.backoff_limit} reached: {why}",
        )
    return None


def disruption_verdict(run_policy: RunPolicy, disruptions: int, why: str) -> tuple[str, str] | None:
    """(reason, message) the training fails with after one more disruption, or None when the
    group restarts (runPolicy.disruptionLimit, unset: never fails).

    >>> disruption_verdict(RunPolicy(disruptionLimit=1), 1, "TPU t is PREEMPTED")
    ('DisruptionLimitExceeded', 'runPolicy.disruptionLimit 1 reached: TPU t is PREEMPTED')
    """
    limit = run_policy.disruption_limit
    if limit is None or disruptions < limit:
        return None
    return "DisruptionLimitExceeded", f"runPolicy.disruptionLimit {limit} reached: {why}"


def disrupted_message(disruption: int, why: str) -> str:
    """status.message of a group restarting after disruption number `disruption`."""
    return f"disruption {disruption} (not counted in runPolicy.backoffLimit): {why}"


def deadline_exceeded(deadline: int | None, status: Mapping[str, Any], now: datetime) -> str | None:
    """The failure message once runPolicy.activeDeadlineSeconds has passed since startTime.

    >>> deadline_exceeded(5, {"startTime": "2025-01-01T00:00:00Z"},
    ...                   datetime.fromisoformat("2025-01-01T00:00:06+00:00"))
    'runPolicy.activeDeadlineSeconds: training ran longer than 5s'
    """
    started = parse_time(status.get("startTime"))
    if deadline is None or started is None or now < started + timedelta(seconds=deadline):
        return None
    return f"runPolicy.activeDeadlineSeconds: training ran longer than {deadline}s"


def clean_up(
    states: Sequence[WorkerState], policy: str, status: Mapping[str, Any], now: datetime
) -> list[str]:
    """Pods to delete after the training finished, per runPolicy.cleanPodPolicy.

    Running: after a success the other workers are usually exiting already (the kubelet has not
    said so yet); they get FINISH_GRACE_SECONDS from completionTime to finish, so that their
    logs stay. After a failure they are stuck in a collective: deleted at once.
    """
    if policy == CleanPodPolicy.ALL.value:
        return [s.name for s in states if not s.terminating]
    if policy == CleanPodPolicy.RUNNING.value:
        until = finish_grace_until(status)
        if until is not None and now < until:
            return []
        return [s.name for s in states if s.active]
    return []


def finish_grace_until(status: Mapping[str, Any]) -> datetime | None:
    """Until when a succeeded training's workers may finish on their own (None: it did not
    succeed).

    >>> finish_grace_until({"phase": "Succeeded", "completionTime": "2025-01-01T00:00:00Z"})
    datetime.datetime(2025, 1, 1, 0, 1, tzinfo=datetime.timezone.utc)
    """
    done = parse_time(status.get("completionTime"))
    if status.get("phase") != Phase.SUCCEEDED.value or done is None:
        return None
    return done + timedelta(seconds=FINISH_GRACE_SECONDS)


def worker_counts(current: Mapping[int, WorkerState], workers: int) -> dict[str, Any]:
    ready = sum(s.ready and not s.terminating for s in current.values())
    return {
        "ready": ready,
        "active": sum(s.active for s in current.values()),
        "succeeded": sum(s.succeeded for s in current.values()),
        "failed": sum(s.failed for s in current.values()),
        "summary": f"{ready}/{workers}",
    }


class _Pass:
    """Accumulates one pass's status changes, conditions and events."""

    def __init__(
        self, status: Mapping[str, Any], now: datetime, generation: int | None, name: str = ""
    ):
        self.name = name
        self.status = {k: status[k] for k in OWNED_STATUS_FIELDS if k in status}
        self.status["observedGeneration"] = generation
        self.now, self.stamp, self.generation = now, format_time(now), generation
        self.events: list[Event] = []

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or Phase.PENDING.value)

    def condition(self, type_: ConditionType, status: bool, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(
            self.status.get("conditions", []),
            type_.value,
            status,
            reason,
            message,
            self.stamp,
            self.generation,
        )

    def drop_false(self, type_: ConditionType, reason: str, message: str = "") -> None:
        """Set `type_` False only if it exists (no clutter of never-true conditions)."""
        if any(c.get("type") == type_.value for c in self.status.get("conditions", [])):
            self.condition(type_, False, reason, message)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def set_phase(self, phase: Phase, reason: str, message: str) -> None:
        changed = self.phase != phase.value
        self.status["phase"] = phase.value
        self.status["message"] = message
        self.condition(ConditionType.RUNNING, phase == Phase.RUNNING, reason, message)
        if phase == Phase.RESTARTING:
            self.condition(ConditionType.RESTARTING, True, reason, message)
        else:
            self.drop_false(ConditionType.RESTARTING, reason)
        for waiting in (Phase.SUSPENDED, Phase.QUEUED):
            kind = ConditionType(waiting.value)
            if phase == waiting:
                self.condition(kind, True, reason, message)
            else:
                self.drop_false(kind, reason)
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            kind = ConditionType.SUCCEEDED if phase == Phase.SUCCEEDED else ConditionType.FAILED
            self.condition(kind, True, reason, message)
            self.status.setdefault("completionTime", self.stamp)
        if changed and phase in (
            Phase.RUNNING,
            Phase.SUCCEEDED,
            Phase.FAILED,
            Phase.SUSPENDED,
            Phase.QUEUED,
        ):
            self.event("Warning" if phase == Phase.FAILED else "Normal", reason, message)


def reconcile(
    training: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    queueing: kueue.Queueing | None = None,
    pod_policy: podpolicy.Level = podpolicy.Level.RESTRICTED,
    health: Mapping[str, NodeHealth] | None = None,
    deleted: Sequence[Mapping[str, Any]] = (),
    preparation: prepare.Preparation | None = None,
) -> Plan:
    """Decide the next step for `training` given its worker `pods` (as listed) at `now`;
    `queueing`: the training is queued with Kueue (its Workload as cached); `pod_policy`: the
    level its worker pods must meet (`berth_operator.podpolicy`) — a training whose pods do not
    fails before it is queued or any pod is created; `health`: what is known of the nodes of
    its pods (`suspect_nodes` says which to look up; a node not in it counts as ready);
    `deleted`: the last state of disrupted pods deleted since the last pass (an eviction on a
    node that deletes at once leaves no other trace); `preparation`: its data.prepare Job and
    that Job's pods, as cached (`berth_operator.prepare`)."""
    states = [s for s in (observe_pod(pod) for pod in pods) if s is not None]
    gone = [s for s in (observe_pod(pod) for pod in deleted) if s is not None]
    health = health or {}
    preparation = preparation or prepare.Preparation()
    plan = _decide(training, states, gone, now, queueing, pod_policy, health, preparation)
    # Whatever the pass deletes, or someone deleted, on a dead node goes with grace 0.
    dead = {
        s.name
        for s in states
        if s.node is not None
        and health.get(s.node, NodeHealth.READY).dead
        and (s.terminating or s.name in plan.delete)
    }
    plan.force_delete = sorted(dead)
    plan.delete = [name for name in plan.delete if name not in dead]
    return plan


def group(status: Mapping[str, Any]) -> int:
    """The group number a status names: its group restarts of either kind so far.

    >>> group({"restarts": 2, "disruptions": 3})
    5
    """
    return int(status.get("restarts") or 0) + int(status.get("disruptions") or 0)


def suspect_nodes(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Nodes whose health decides this pass: those of bound, unfinished pods that are not Ready
    or are being deleted. A node that dies makes its pods not Ready (the node lifecycle
    controller), so a group whose pods are all Ready costs no lookup.

    >>> pod = {"metadata": {"labels": {"berth.dev/index": "0"}}, "spec": {"nodeName": "n1"},
    ...        "status": {"phase": "Running"}}
    >>> suspect_nodes([pod])
    ['n1']
    """
    found = {
        s.node
        for s in (observe_pod(pod) for pod in pods)
        if s is not None
        and s.node is not None
        and s.running_somewhere
        and (s.terminating or not s.ready)
    }
    return sorted(found)


def disrupted(state: WorkerState, health: Mapping[str, NodeHealth]) -> str | None:
    """Why worker `state` is disrupted rather than failed, or None: its DisruptionTarget
    condition (preemption, eviction, drain, the taint manager), or its node is lost.

    A node the kubelet reports NotReady counts once the pod is not Ready either (the node
    lifecycle controller's doing): a short flap of the node alone restarts nothing.
    """
    where = f"worker {state.index} ({state.name})" + (
        f" on node {state.node}" if state.node else ""
    )
    if state.succeeded:
        return None
    if state.disruption:
        return f"{where} disrupted: {state.disruption}"[:1024]
    node = health.get(state.node or "", NodeHealth.READY)
    if state.running_somewhere and (node.dead or (node != NodeHealth.READY and not state.ready)):
        return f"{where} lost: {nodes.describe(str(state.node), node)}"
    return None


def disruption_of(pod: Mapping[str, Any]) -> str | None:
    """Why worker `pod` is being disrupted (its DisruptionTarget condition), or None."""
    state = observe_pod(pod)
    return None if state is None else state.disruption


def _decide(
    training: Mapping[str, Any],
    states: Sequence[WorkerState],
    gone: Sequence[WorkerState],
    now: datetime,
    queueing: kueue.Queueing | None,
    pod_policy: podpolicy.Level,
    health: Mapping[str, NodeHealth],
    preparation: prepare.Preparation,
) -> Plan:
    meta = training["metadata"]
    name = meta["name"]
    p = _Pass(training.get("status") or {}, now, meta.get("generation"), name)
    restarts = int(p.status.get("restarts") or 0)
    disruptions = int(p.status.get("disruptions") or 0)
    try:
        spec = parse_spec(training)
    except ValidationError as error:  # the CRD schema admits it, the trainer's rules do not
        detail = error.errors()[0]
        where = ".".join(str(part) for part in detail["loc"])
        p.set_phase(Phase.FAILED, "InvalidSpec", f"spec.{where}: {detail['msg']}"[:1024])
        return Plan(status=p.status, restart=group(p.status), events=p.events)
    run_policy = spec.run_policy
    number = max([restarts + disruptions, *(s.restart for s in states)])
    # Pods of a group the status does not know yet (its write was lost): counted as failures.
    restarts = number - disruptions
    p.status["restarts"], p.status["disruptions"] = restarts, disruptions
    current = {s.index: s for s in states if s.restart == number and s.index < spec.workers}
    plan = Plan(status=p.status, restart=number, events=p.events)

    def finish(phase: Phase, reason: str, message: str) -> Plan:
        p.set_phase(phase, reason, message)
        plan.delete = clean_up(states, run_policy.clean_pod_policy, p.status, now)
        p.status["workers"] = worker_counts(current, spec.workers)
        return plan

    def restart_group(reason: str, message: str, event: str) -> Plan:
        plan.delete = [s.name for s in states if not s.terminating]
        p.set_phase(Phase.RESTARTING, reason, message)
        p.event("Warning", "Restarting", event)
        p.status["workers"] = worker_counts({}, spec.workers)
        return plan

    if queueing is None:
        p.status.pop("queue", None)
    if p.phase in FINISHED_PHASES:
        if queueing is not None:
            _finish_workload(plan, p, queueing, str(meta.get("uid")))
        if preparation.running:  # failed while preparing: its pods would go on for nothing
            plan.delete_prepare_job = prepare.prepare_job_name(name)
        p.status.setdefault("completionTime", p.stamp)
        plan.delete = clean_up(states, run_policy.clean_pod_policy, p.status, now)
        ttl = run_policy.ttl_seconds_after_finished
        done = parse_time(p.status["completionTime"])
        if ttl is not None and done is not None and now >= done + timedelta(seconds=ttl):
            plan.delete_training = True
        p.status["workers"] = worker_counts(current, spec.workers)
        return plan

    # Worker 0 stands for all (they differ only in their names and env) before the pod policy
    # and Kueue's count.
    worker = build_worker_pod(training, 0, "", restart=0)
    if refused := pod_policy_violations(worker, pod_policy):
        return finish(Phase.FAILED, "PodPolicyViolation", refused)
    preparer = prepare.build_prepare_pod_template(training, "") if spec.data.prepare else None
    if preparer is not None and (refused := pod_policy_violations(preparer, pod_policy)):
        return finish(Phase.FAILED, "PodPolicyViolation", f"data.prepare: {refused}"[:1024])

    # Pods of an older group are stale: delete them before anything else.
    plan.delete = [s.name for s in states if current.get(s.index) is not s and not s.terminating]
    held = None
    if queueing is not None:
        all_ready = sum(s.ready or s.succeeded for s in current.values()) == spec.workers
        held = _queue(p, plan, training, worker, run_policy.suspend, states, all_ready, queueing)

    if (run_policy.suspend or held is not None) and preparation.running:
        plan.delete_prepare_job = prepare.prepare_job_name(name)  # a new Job resumes it
    if run_policy.suspend:
        plan.delete = [s.name for s in states if not s.terminating]
        if p.phase != Phase.SUSPENDED.value:
            p.set_phase(Phase.SUSPENDED, "Suspended", "runPolicy.suspend is true")
        p.status["workers"] = worker_counts({}, spec.workers)
        return plan
    if p.phase == Phase.SUSPENDED.value:
        p.set_phase(Phase.PENDING, "Resumed", "runPolicy.suspend is false")
        p.event("Normal", "Resumed", "runPolicy.suspend is false: recreating workers")
        p.status.pop("startTime", None)
    if held is not None:  # Kueue has not admitted the training (or took it back)
        plan.delete = [s.name for s in states if not s.terminating]
        p.set_phase(Phase.QUEUED, *held)
        p.status.pop("startTime", None)
        p.status["workers"] = worker_counts({}, spec.workers)
        return plan

    if spec.data.prepare is not None and not prepared(p.status):
        step = _prepare(p, plan, spec, preparation)
        if isinstance(step, tuple):
            if preparation.running:
                plan.delete_prepare_job = prepare.prepare_job_name(name)
            return finish(Phase.FAILED, *step)
        if step is not None:
            return step

    overdue = deadline_exceeded(run_policy.active_deadline_seconds, p.status, now)
    if overdue:
        return finish(Phase.FAILED, "DeadlineExceeded", overdue)

    # A disruption outranks the failures it causes (the other workers' collectives break).
    vanished = [s for s in gone if s.restart == number and s.index not in current]
    if whys := [
        (why, s)
        for s in sorted([*current.values(), *vanished], key=lambda s: s.index)
        if (why := disrupted(s, health))
    ]:
        why = whys[0][0]
        if not any(s.disruption for _, s in whys):  # lost nodes only: no SIGTERM agreement
            plan.delete_grace = LOST_NODE_GRACE_SECONDS
        p.event("Warning", "Disrupted", why)
        if verdict := disruption_verdict(run_policy, disruptions, why):
            return finish(Phase.FAILED, *verdict)
        p.status["disruptions"], plan.restart = disruptions + 1, number + 1
        return restart_group(
            "Disrupted",
            disrupted_message(disruptions + 1, why),
            f"restarting all {spec.workers} workers (disruption {disruptions + 1}): {why}",
        )

    failures = sorted((s for s in current.values() if s.failed), key=lambda s: s.index)
    if p.phase == Phase.RUNNING.value:  # a worker vanishing from a running group is a failure
        failures += [
            _lost(name, i, number)
            for i in range(spec.workers)
            if i not in current or (current[i].terminating and not current[i].succeeded)
        ]
    if failures:
        first = failures[0]
        reason = first.reason if first.reason not in (None, "Error") else "WorkerFailed"
        why = first.describe()
        p.event("Warning", "WorkerFailed", why)
        if verdict := failure_verdict(run_policy, first, restarts, str(reason), why):
            return finish(Phase.FAILED, *verdict)
        p.status["restarts"], plan.restart = restarts + 1, number + 1
        return restart_group(
            "GroupRestart",
            f"restart {restarts + 1}/{run_policy.backoff_limit}: {why}",
            f"restarting all {spec.workers} workers (restart {restarts + 1}): {why}",
        )

    chief = current.get(0)
    if chief is not None and chief.succeeded:
        # Its final figures, in the same write as the phase: the scrapes may have missed the
        # last steps, or (a run shorter than the scrape interval) every step.
        final = progress.final_figures(chief.message, str(spec.task))
        old = (training.get("status") or {}).get("progress") or {}
        if "progress" in final:
            p.status["progress"] = {**old, **final["progress"], "updatedAt": p.stamp}
        if "validation" in final:
            p.status["validation"] = {**final["validation"], "updatedAt": p.stamp}
        return finish(Phase.SUCCEEDED, "Completed", f"worker 0 ({chief.name}) completed")

    timeout = timedelta(seconds=run_policy.pending_timeout_seconds)
    for s in sorted(current.values(), key=lambda s: s.index):
        if s.phase == "Pending" and not s.terminating and s.created and now >= s.created + timeout:
            suffix = f": {s.message}" if s.message else ""
            return finish(
                Phase.FAILED,
                s.reason or "PendingTimeout",
                f"worker {s.index} ({s.name}) pending for more than "
                f"{run_policy.pending_timeout_seconds}s "
                f"(runPolicy.pendingTimeoutSeconds): {s.reason or 'Pending'}{suffix}",
            )

    occupied = {s.name for s in states}
    plan.create = [
        i for i in range(spec.workers) if i not in current and worker_name(name, i) not in occupied
    ]
    if plan.create:
        p.status.setdefault("startTime", p.stamp)
        p.condition(
            ConditionType.CREATED, True, "WorkersCreated", f"created {spec.workers} worker pod(s)"
        )

    ready = sum(s.ready for s in current.values())
    if ready == spec.workers and not plan.delete:
        p.set_phase(Phase.RUNNING, "AllWorkersReady", f"{ready}/{spec.workers} workers ready")
    elif p.phase == Phase.RESTARTING.value:
        restarting = get_condition(p.status.get("conditions", []), "Restarting") or {}
        reason = str(restarting.get("reason") or "GroupRestart")  # or Disrupted
        p.set_phase(Phase.RESTARTING, reason, str(p.status.get("message") or ""))
    elif plan.create or current:
        p.set_phase(Phase.STARTING, "WorkersStarting", f"{ready}/{spec.workers} workers ready")
    counts = worker_counts(current, spec.workers)
    p.status["workers"] = counts
    return plan


def prepared(status: Mapping[str, Any]) -> bool:
    """Whether the training's data.prepare Job completed (condition Prepared=True): a group
    restart, a resume or a new operator never prepares again.

    >>> prepared({"conditions": [{"type": "Prepared", "status": "True"}]}), prepared({})
    (True, False)
    """
    found = get_condition(status.get("conditions") or [], ConditionType.PREPARED.value)
    return (found or {}).get("status") == "True"


def _prepare(
    p: _Pass, plan: Plan, spec: BertTrainingSpec, preparation: prepare.Preparation
) -> Plan | tuple[str, str] | None:
    """The data.prepare step: the plan to return while the Job is created or runs; None once
    it completed (Prepared=True: the workers are created in this very pass); the (reason,
    message) to fail with once it failed (the message from the failed pod) or a prepare pod
    was Pending longer than runPolicy.pendingTimeoutSeconds."""
    name, slices = p.name, spec.data.prepare.workers if spec.data.prepare else 1
    if preparation.job is None:
        plan.create_prepare_job = True
        job_name = prepare.prepare_job_name(name)
        p.status["prepare"] = prepare.JobState(job_name, slices, 0, 0, 0, False, None).counts()
        message = f"preparing data: creating Job {job_name}"
    else:
        job = prepare.observe_job(preparation.job)
        p.status["prepare"] = job.counts()
        if job.complete:
            message = f"Job {job.name}: {job.succeeded}/{job.completions} slice(s) prepared"
            p.condition(ConditionType.PREPARED, True, "JobCompleted", message)
            p.event("Normal", "Prepared", message)
            return None
        timeout = spec.run_policy.pending_timeout_seconds
        failure = (
            ("PrepareFailed", prepare.failure_message(job, preparation.pods))
            if job.failure is not None
            else prepare.pending_too_long(preparation.pods, p.now, timeout)
        )
        if failure is not None:
            p.condition(ConditionType.PREPARED, False, *failure)
            return failure
        message = f"preparing data: Job {job.name}, {job.succeeded}/{job.completions} slice(s) done"
    if p.phase != Phase.PREPARING.value:
        p.event("Normal", "Preparing", message)
    p.set_phase(Phase.PREPARING, "Preparing", message)
    p.condition(ConditionType.PREPARED, False, "Preparing", "the prepare Job runs")
    p.status["workers"] = worker_counts({}, spec.workers)
    return plan


def pod_policy_violations(worker: Mapping[str, Any], level: podpolicy.Level) -> str:
    """Why pod policy `level` refuses a training's merged `worker` pod ("" when it does not).

    >>> t = {"metadata": {"name": "b"}, "spec": {"vocabulary": "v", "data": {"train": "d"},
    ...      "output": {"dir": "o"}, "checkpoint": {"dir": "c"},
    ...      "podTemplate": {"spec": {"nodeName": "n1"}}}}
    >>> worker = build_worker_pod(t, 0, "", restart=0)
    >>> pod_policy_violations(worker, podpolicy.Level.RESTRICTED).split(": ")[:2]
    ['pod policy restricted', 'spec.podTemplate.spec.nodeName']
    >>> pod_policy_violations(worker, podpolicy.Level.PRIVILEGED)
    ''
    """
    found = podpolicy.violations(worker, level)
    return f"pod policy {level}: {'; '.join(found)}"[:1024] if found else ""


def _queue(
    p: _Pass,
    plan: Plan,
    training: Mapping[str, Any],
    worker: Mapping[str, Any],
    suspend: bool,
    states: Sequence[WorkerState],
    ready: bool,
    queueing: kueue.Queueing,
) -> tuple[str, str] | None:
    """Kueue's say over a training: the Workload writes go into `plan`; the (reason, message)
    to queue with while the workers may not run, or None once the Workload is admitted.
    `worker`: its merged worker pod (what Kueue counts); `ready`: every worker of the current
    group is Ready or done.

    Evicted: every worker is deleted and, once none is left, the quota is given back
    (`kueue.release`). The group restart count is untouched: an eviction is not a failure."""
    meta = training["metadata"]
    uid, queue = str(meta.get("uid")), queueing.queue
    state = kueue.observe(queueing.workload, uid)
    name = state.name if state else kueue.workload_name(meta["name"], uid)
    admitted = state is not None and state.admitted and state.eviction is None
    p.status["queue"] = {
        "name": queue,
        "workload": name,
        **({"clusterQueue": state.cluster_queue} if admitted and state else {}),
    }
    if state is None:
        plan.create_workload = True
        return "Queued", f"creating Workload {name} in LocalQueue {queue}"
    patch: dict[str, Any] = {}
    if state.active == suspend:
        patch["spec"] = {"active": not suspend}
    pod_set_hash = kueue.pod_set_hash(training, worker)
    if state.pod_set_hash is None and not state.deleting:
        # Made by an older operator (no hash of ours): taken as it is, not replaced, so that an
        # upgrade does not send admitted trainings back to the queue.
        patch["metadata"] = {"annotations": {kueue.POD_SET_HASH_ANNOTATION: pod_set_hash}}
    held: tuple[str, str] | None = None
    if state.deleting:
        if state.finalizer and not states:
            patch |= kueue.drop_finalizer(state)
        held = ("WorkloadDeleted", f"Workload {name} is being deleted; a new one follows")
    elif state.pod_set_hash not in (None, pod_set_hash):
        # Kueue's pod sets are immutable: a new Workload asks for what the workers now need.
        if not states:
            patch |= kueue.drop_finalizer(state)
            plan.delete_workload = True
        held = (
            "WorkloadOutOfSync",
            "what the workers request changed (spec.resources or spec.podTemplate): "
            f"replacing Workload {name}",
        )
    elif (eviction := state.eviction) is not None:
        reason = str(eviction.get("reason") or "Evicted")
        said = f"evicted by Kueue ({reason}): {eviction.get('message') or ''}".rstrip(": ")
        if state.quota_reserved and not states:
            plan.workload_status = kueue.release(state, p.stamp)
            p.event("Normal", "Requeued", f"{said}; back in LocalQueue {queue}")
        elif state.quota_reserved:
            said += "; stopping the workers (they checkpoint)"
        else:
            said += f"; queued in LocalQueue {queue}: {state.waiting_for(queue)}"
        held = (reason, said)
    elif not state.admitted:
        cond = get_condition(state.conditions, "QuotaReserved")
        held = (str((cond or {}).get("reason") or "Queued"), state.waiting_for(queue))
    else:  # admitted: keep PodsReady true to the workers (Kueue's waitForPodsReady reads it)
        plan.workload_status = kueue.pods_ready(state, ready, p.stamp)
    plan.workload_patch = patch or None
    return held


def _finish_workload(plan: Plan, p: _Pass, queueing: kueue.Queueing, uid: str) -> None:
    """A finished training finishes its Workload (Kueue frees the quota), then lets it go."""
    state = kueue.observe(queueing.workload, uid)
    if state is None:
        return
    if not state.finished:
        succeeded = p.phase == Phase.SUCCEEDED.value
        message = str(p.status.get("message") or p.phase)
        plan.workload_status = kueue.finish(state, succeeded, message, p.stamp)
    elif state.finalizer:
        plan.workload_patch = kueue.drop_finalizer(state)


def next_due(
    training: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    prepare_pods: Sequence[Mapping[str, Any]] = (),
) -> datetime | None:
    """When a time-based rule next needs a pass, with no event to trigger it (None: never).

    `training` carries the status the last pass wrote. The rules: the TTL of a finished training,
    the grace its workers get to finish after a success (FINISH_GRACE_SECONDS, while one still
    runs), runPolicy.activeDeadlineSeconds since startTime, and pendingTimeoutSeconds of a worker
    of the current group, or while Preparing of a data.prepare pod (`prepare_pods`), that is
    still Pending.

    >>> t = {"metadata": {"name": "b"}, "status": {"phase": "Running", "restarts": 0,
    ...      "startTime": "2025-01-01T00:00:00Z"},
    ...      "spec": {"vocabulary": "v", "data": {"train": "d"}, "output": {"dir": "o"},
    ...               "checkpoint": {"dir": "c"}, "runPolicy": {"activeDeadlineSeconds": 60}}}
    >>> next_due(t, []).isoformat()
    '2025-01-01T00:01:00+00:00'
    """
    try:
        run_policy = parse_spec(training).run_policy
    except ValidationError:
        return None
    status = training.get("status") or {}
    phase = status.get("phase") or Phase.PENDING.value
    if phase in FINISHED_PHASES:
        done = parse_time(status.get("completionTime"))
        ttl = run_policy.ttl_seconds_after_finished
        finished = [] if ttl is None or done is None else [done + timedelta(seconds=ttl)]
        grace = finish_grace_until(status)
        if (
            grace is not None
            and run_policy.clean_pod_policy == CleanPodPolicy.RUNNING.value
            and any(s is not None and s.active for s in map(observe_pod, pods))
        ):
            finished.append(grace)
        return min(finished, default=None)
    if run_policy.suspend or phase == Phase.SUSPENDED.value:
        return None
    dues: list[datetime] = []
    started = parse_time(status.get("startTime"))
    if run_policy.active_deadline_seconds is not None and started is not None:
        dues.append(started + timedelta(seconds=run_policy.active_deadline_seconds))
    current = group(status)
    timeout = timedelta(seconds=run_policy.pending_timeout_seconds)
    for state in (observe_pod(pod) for pod in pods):
        if (
            state is not None
            and state.restart == current
            and state.phase == "Pending"
            and not state.terminating
            and state.created is not None
        ):
            dues.append(state.created + timeout)
    if phase == Phase.PREPARING.value:
        dues += [created + timeout for created, _ in prepare.pending_since(prepare_pods)]
    return min(dues, default=None)


def _lost(name: str, index: int, group: int) -> WorkerState:
    """A stand-in failure for a worker pod deleted while the group was running."""
    return WorkerState(
        name=worker_name(name, index),
        index=index,
        restart=group,
        phase="Failed",
        ready=False,
        terminating=True,
        created=None,
        ip=None,
        exit_code=None,
        reason="WorkerDeleted",
        message="the pod was deleted while the group was running",
    )


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch turning `old` status into `new` for the fields the pass owns, and the
    final figures when the pass set them."""
    patch = {k: new.get(k) for k in OWNED_STATUS_FIELDS if old.get(k) != new.get(k)}
    for k in FINAL_STATUS_FIELDS:
        if new.get(k) is not None and old.get(k) != new[k]:
            patch[k] = new[k]
    return patch
