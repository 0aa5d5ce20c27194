"""The Cloud TPU decision: (training, observed TPU, guest attributes, now) → a TpuPlan. Pure.

A training with `spec.tpu.provider: cloud` has no pods: its one child is a Cloud TPU VM whose
id derives from it (`tenancy.TrainingRef`). Each pass observes the node (and its queued resource
for Spot, and the pending create operation) plus the `berth/` guest attributes the trainer
writes, and decides one action:

* the admin's rules refuse the spec (`tenancy.TpuTenancy.refusal`, no API call made), or a node
  of its id is not this training's (`foreign`) → Pending, `Created` False with the reason and a
  Warning event; nothing is created or deleted, and the training goes on once the cause is gone;
* nothing there → `create` (phase Starting; a pending create operation is waited for);
* READY → Running; progress from the guest attributes (`step`, `loss`, `examples_per_second`);
* PREEMPTED / TERMINATED (lost: a disruption) → `delete`, `disruptions += 1` (counts against
  `runPolicy.disruptionLimit`, not `backoffLimit`), Restarting, then `create` once it is gone:
  the trainer resumes from the checkpoint; vanished while running → the same as a failure,
  `restarts += 1` (counts against `runPolicy.backoffLimit`);
* guest `state=succeeded` → Succeeded; `state=failed` → restart or Failed per restartPolicy;
* a failed create (quota, invalid accelerator: the API's message) → Failed;
* finished or suspended → `delete` until the node is gone, so nothing is left billing.

    >>> from datetime import UTC, datetime
    >>> training = {"metadata": {"name": "b", "namespace": "ml", "uid": "u", "generation": 1},
    ...     "spec": {"vocabulary": "v", "data": {"train": "gs://d"}, "output": {"dir": "gs://o"},
    ...              "checkpoint": {"dir": "gs://c"}, "workers": 1, "tpu": {"provider": "cloud",
    ...              "acceleratorType": "v4-8", "runtimeVersion": "tpu-vm-tf-2.16.1-pjrt",
    ...              "project": "p", "zone": "us-central2-b"}}}
    >>> plan = decide(training, TpuObservation(), datetime(2025, 1, 1, tzinfo=UTC))
    >>> plan.action, plan.status["phase"]
    ('create', 'Starting')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from berth_operator.api import FINISHED_PHASES, ConditionType, Phase
from berth_operator.builders import parse_spec
from berth_operator.policy import (
    OWNED_STATUS_FIELDS,
    Event,
    _Pass,
    deadline_exceeded,
    disrupted_message,
    disruption_verdict,
    failure_verdict,
)
from berth_operator.progress import percent
from berth_operator.tpu.node import node_name
from berth_operator.tpu.tenancy import Refusal, TrainingRef
from berth_operator.workers import WorkerState, parse_time

Action = Literal["create", "delete", "none"]
#: Node states from which the node never comes back by itself.
LOST_STATES = frozenset({"PREEMPTED", "TERMINATED", "STOPPED", "HIDDEN"})
#: Status fields the Cloud TPU pass owns (it also writes progress: there is no scraper).
TPU_STATUS_FIELDS = (*OWNED_STATUS_FIELDS, "tpu", "progress")
MAX_MESSAGE = 1024


@dataclasses.dataclass(frozen=True)
class TpuObservation:
    """What the Cloud TPU API says about a training's node right now."""

    node_state: str | None = None  # None: no such node (NOT_FOUND)
    health: str | None = None
    endpoints: tuple[str, ...] = ()
    create_error: str | None = None  # the create call or its operation failed: the API's words
    operation_pending: bool = False  # the create operation is not done yet
    guest: Mapping[str, str] = dataclasses.field(default_factory=dict)  # berth/<key> → value
    #: A node (or queued resource) of this training's id whose labels name another: its name.
    foreign: str | None = None


@dataclasses.dataclass
class TpuPlan:
    """Do `action`, then write `status` (the fields in TPU_STATUS_FIELDS)."""

    status: dict[str, Any]
    action: Action = "none"
    restart: int = 0
    events: list[Event] = dataclasses.field(default_factory=list)
    delete_training: bool = False


def _number(guest: Mapping[str, str], key: str) -> float | None:
    try:
        return float(guest[key])
    except (KeyError, ValueError):
        return None


def progress_from_guest(
    guest: Mapping[str, str], total_steps: int, now_stamp: str
) -> dict[str, Any] | None:
    """status.progress from the trainer's guest attributes (None when it reported nothing)."""
    step = _number(guest, "step")
    if step is None:
        return None
    loss, speed = _number(guest, "loss"), _number(guest, "examples_per_second")
    out: dict[str, Any] = {
        "step": int(step),
        "totalSteps": total_steps,
        "percent": percent(int(step), total_steps),
        "summary": f"{int(step)}/{total_steps}",
        "updatedAt": now_stamp,
    }
    if loss is not None:
        out["loss"] = round(loss, 4)
    if speed is not None:
        out["examplesPerSecond"] = round(speed, 1)
    checkpoint = _number(guest, "last_checkpoint_step")
    if checkpoint is not None:
        out["lastCheckpointStep"] = int(checkpoint)
    return out


def decide(
    training: Mapping[str, Any],
    obs: TpuObservation,
    now: datetime,
    refusal: Refusal | None = None,
) -> TpuPlan:
    """The next step for a Cloud TPU training (see the module docstring); `refusal`: the
    admin's rules refuse it, and `obs` is empty (the API was not asked)."""
    meta = training["metadata"]
    name = meta["name"]
    old = training.get("status") or {}
    p = _Pass(old, now, meta.get("generation"))
    for key in ("tpu", "progress"):
        if key in old:
            p.status[key] = old[key]
    restarts = int(p.status.get("restarts") or 0)
    disruptions = int(p.status.get("disruptions") or 0)
    p.status["restarts"], p.status["disruptions"] = restarts, disruptions
    #: The trainer's BERTH_RESTART: group restarts of either kind.
    plan = TpuPlan(status=p.status, restart=restarts + disruptions, events=p.events)
    exists = obs.node_state is not None
    gone_or_going = not exists or obs.node_state == "DELETING"

    def remove_if_there() -> None:
        plan.action = "none" if gone_or_going else "delete"

    try:
        spec = parse_spec(training)
    except ValidationError as error:
        detail = error.errors()[0]
        where = ".".join(str(part) for part in detail["loc"])
        p.set_phase(Phase.FAILED, "InvalidSpec", f"spec.{where}: {detail['msg']}"[:MAX_MESSAGE])
        remove_if_there()
        return plan
    assert spec.tpu is not None
    run_policy = spec.run_policy
    tpu_status: dict[str, Any] = {
        "name": node_name(TrainingRef.of(meta), spec.tpu),
        "state": obs.node_state or "NOT_FOUND",
    }
    if obs.health:
        tpu_status["health"] = obs.health
    if obs.endpoints:
        tpu_status["endpoints"] = list(obs.endpoints)
    if obs.operation_pending and (old.get("tpu") or {}).get("operation"):
        tpu_status["operation"] = old["tpu"]["operation"]
    if refusal is None:  # else the API was not asked: keep what was last seen
        p.status["tpu"] = tpu_status
    progress = progress_from_guest(obs.guest, spec.training.steps, p.stamp)
    if progress is not None and _changed(old.get("progress"), progress):
        p.status["progress"] = progress

    def finish(phase: Phase, reason: str, message: str) -> TpuPlan:
        p.set_phase(phase, reason, message[:MAX_MESSAGE])
        remove_if_there()
        return plan

    if p.phase in FINISHED_PHASES:
        remove_if_there()
        p.status.setdefault("completionTime", p.stamp)
        ttl = run_policy.ttl_seconds_after_finished
        done = parse_time(p.status["completionTime"])
        if ttl is not None and done is not None and now >= done + timedelta(seconds=ttl):
            plan.delete_training = gone_or_going
        return plan
    if run_policy.suspend:
        if p.phase != Phase.SUSPENDED.value:
            p.set_phase(Phase.SUSPENDED, "Suspended", "runPolicy.suspend is true")
        remove_if_there()
        return plan
    if p.phase == Phase.SUSPENDED.value:
        p.set_phase(Phase.PENDING, "Resumed", "runPolicy.suspend is false")
        p.status.pop("startTime", None)

    if refusal is None and obs.foreign:
        refusal = Refusal(
            "TpuNodeConflict",
            f"TPU {obs.foreign} exists but its labels do not name this training (uid "
            f"{meta.get('uid')}): Berth neither uses nor deletes it; delete it, or recreate the "
            "training (a new uid gets a new node id)",
        )
    if refusal is not None:
        if p.status.get("message") != refusal.message:
            p.event("Warning", refusal.reason, refusal.message)
        p.set_phase(Phase.PENDING, refusal.reason, refusal.message)
        p.condition(ConditionType.CREATED, False, refusal.reason, refusal.message)
        return plan

    if obs.create_error:
        return finish(Phase.FAILED, "TpuCreateFailed", f"creating the TPU: {obs.create_error}")
    overdue = deadline_exceeded(run_policy.active_deadline_seconds, p.status, now)
    if overdue:
        return finish(Phase.FAILED, "DeadlineExceeded", overdue)

    state = obs.guest.get("state")
    if p.phase == Phase.RESTARTING.value and (obs.node_state in LOST_STATES or state == "failed"):
        remove_if_there()  # the failed node of this restart, still on its way out
        return plan
    if exists and state == "succeeded":
        return finish(Phase.SUCCEEDED, "Completed", f"the trainer on TPU {name} completed")
    failure: WorkerState | None = None
    if exists and state == "failed":
        code = obs.guest.get("exit_code")
        failure = WorkerState(
            name, 0, restarts, "Failed", False, False, None, None,
            int(code) if code and code.lstrip("-").isdigit() else None, None, None,
        )  # fmt: skip
        why = f"the trainer on TPU {name} failed: exit code {code}"
    elif obs.node_state in LOST_STATES:  # Spot preemption, maintenance: not the trainer's fault
        why = f"TPU {name} is {obs.node_state}"
        p.event("Warning", "Disrupted", why)
        if verdict := disruption_verdict(run_policy, disruptions, why):
            return finish(Phase.FAILED, *verdict)
        p.status["disruptions"], plan.restart = disruptions + 1, plan.restart + 1
        p.set_phase(
            Phase.RESTARTING,
            "Disrupted",
            f"{disrupted_message(disruptions + 1, why)}; resuming from the checkpoint on a new TPU",
        )
        p.event("Warning", "Restarting", f"recreating TPU {name} (disruption {disruptions + 1})")
        remove_if_there()
        return plan
    elif not exists and not obs.operation_pending and p.phase == Phase.RUNNING.value:
        failure = WorkerState(
            name, 0, restarts, "Failed", False, True, None, None, None, "TpuDeleted", None
        )
        why = f"TPU {name} disappeared while running"
    if failure is not None:
        p.event("Warning", "TpuFailed", why)
        reason = failure.reason or "TrainerFailed"
        if verdict := failure_verdict(run_policy, failure, restarts, reason, why):
            return finish(Phase.FAILED, *verdict)
        p.status["restarts"], plan.restart = restarts + 1, plan.restart + 1
        p.set_phase(
            Phase.RESTARTING,
            "TpuRestart",
            f"restart {restarts + 1}/{run_policy.backoff_limit}: {why}; resuming from the "
            "checkpoint on a new TPU",
        )
        p.event("Warning", "Restarting", f"recreating TPU {name} (restart {restarts + 1})")
        remove_if_there()
        return plan

    if not exists:
        if not obs.operation_pending:
            plan.action = "create"
            p.status.setdefault("startTime", p.stamp)
            p.condition(ConditionType.CREATED, True, "TpuCreated", f"creating TPU {name}")
        if p.phase != Phase.RESTARTING.value:
            p.set_phase(Phase.STARTING, "TpuCreating", f"TPU {name}: creating")
        return plan
    if obs.node_state == "DELETING":
        return plan  # an old node of a restart going away; create once it is gone
    if obs.node_state in ("READY", "REPAIRING"):
        health = f" ({obs.health})" if obs.health else ""
        p.set_phase(Phase.RUNNING, "TpuReady", f"TPU {name}: {obs.node_state}{health}")
    elif p.phase != Phase.RESTARTING.value:
        p.set_phase(Phase.STARTING, "TpuCreating", f"TPU {name}: {obs.node_state}")
    return plan


def _changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    old = old or {}
    return any(old.get(k) != v for k, v in new.items() if k != "updatedAt")


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch turning `old` status into `new` for the fields the TPU pass owns."""
    return {k: new.get(k) for k in TPU_STATUS_FIELDS if old.get(k) != new.get(k)}
