"""Queueing with Kueue: a BertTraining is one Kueue Workload, admitted as a whole. Pure.

Kueue admits job kinds it does not know through their own controller (an *external framework*,
`integrations.externalFrameworks: ["BertTraining.v1alpha1.berth.dev"]` in Kueue's
configuration). The contract is the one Kueue's own job reconciler keeps
(`pkg/controller/jobframework/reconciler.go` of Kueue v0.17), and the operator keeps it too:

* A training labelled `kueue.x-k8s.io/queue-name: <LocalQueue>` gets one Workload, created and
  owned by the operator: one pod set `workers` of `spec.workers` pods, the worker pod as its
  template (so its requests are what Kueue counts), the `resource-in-use` finalizer, and the
  priority of the WorkloadPriorityClass named by `kueue.x-k8s.io/priority-class`.
* No worker pod exists until the Workload is `Admitted`; the pods then get the node labels and
  tolerations of the ResourceFlavors assigned, and what admission checks add (`placement`).
* `Evicted` (preemption, deactivation, ...): the workers are deleted (SIGTERM: they
  checkpoint), and once none is left the operator gives the quota back (`release`: no
  admission, `QuotaReserved` false, `Requeued`), so Kueue queues the Workload again.
* `runPolicy.suspend` is the Workload's `spec.active: false`.
* A finished training finishes its Workload (`finish`) and drops the finalizer.

    >>> workload_name("bert", "0b7c7a4e")
    'berttraining-bert-37ee6'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from berth_operator import builders, labels
from berth_operator.conditions import get_condition, is_true, set_condition

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
WORKLOADS, FLAVORS, PRIORITY_CLASSES = "workloads", "resourceflavors", "workloadpriorityclasses"
QUEUE_LABEL, PRIORITY_LABEL = labels.KUEUE_QUEUE, labels.KUEUE_PRIORITY_CLASS
JOB_UID_LABEL, POD_SET_HASH_ANNOTATION = labels.KUEUE_JOB_UID, labels.POD_SET_HASH
FINALIZER = f"{GROUP}/resource-in-use"
#: What Kueue reads of a pod set's template (besides its count): the requests it counts (pod-level
#: resources, the overhead and the RuntimeClass that brings one, each container's and init
#: container's resources; an init container with `restartPolicy: Always` is a sidecar, counted
#: alongside the containers) and what it matches against ResourceFlavors (node selector,
#: affinity, tolerations).
COUNTED_POD_FIELDS = (
    "resources",
    "overhead",
    "runtimeClassName",
    "nodeSelector",
    "affinity",
    "tolerations",
)
COUNTED_CONTAINER_FIELDS = ("resources", "restartPolicy")
#: How Kueue's configuration names this kind (Kind.version.group).
FRAMEWORK = f"{labels.KIND}.{labels.VERSION}.{labels.GROUP}"
POD_SET = "workers"

#: Kueue's own messages of the PodsReady condition.
PODS_READY = "All pods reached readiness and the workload is running"
PODS_NOT_READY = "Not all pods are ready or succeeded"
PODS_RECOVERING = "At least one pod has failed, waiting for recovery"
#: Eviction reasons after which Kueue's own jobs are marked Requeued (true).
REQUEUED_REASONS = frozenset({"Preempted", "NodeFailures"})


def queue_name(training: Mapping[str, Any]) -> str | None:
    """The LocalQueue a training is queued in (its label), or None: Kueue is not involved.

    >>> queue_name({"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "team-a"}}})
    'team-a'
    """
    return _label(training, QUEUE_LABEL)


def priority_class(training: Mapping[str, Any]) -> str | None:
    """The WorkloadPriorityClass a training asks for (its label), or None."""
    return _label(training, PRIORITY_LABEL)


def _label(training: Mapping[str, Any], key: str) -> str | None:
    value = ((training.get("metadata") or {}).get("labels") or {}).get(key)
    return str(value) if value else None


def without_kueue_labels(training: Mapping[str, Any]) -> dict[str, Any]:
    """`training` without its `kueue.x-k8s.io/` labels: the owner its children copy labels from
    (`kopf.adopt`), so that no worker pod looks like a pod for Kueue's own pod integration.

    >>> without_kueue_labels({"metadata": {"labels": {QUEUE_LABEL: "q", "team": "a"}}})
    {'metadata': {'labels': {'team': 'a'}}}
    """
    meta = dict(training.get("metadata") or {})
    meta["labels"] = {
        k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith(f"{GROUP}/")
    }
    return {**training, "metadata": meta}


def workload_name(training: str, uid: str) -> str:
    """Fixed name of a training's Workload: `berttraining-<name>-<5 hex of its UID>`, so a
    new training of the same name never takes over the Workload of a deleted one."""
    digest = hashlib.sha256(uid.encode()).hexdigest()[:5]
    return f"{labels.SINGULAR}-{training}-{digest}"


def counted(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What Kueue counts of `pod` as a pod set's template (`COUNTED_POD_FIELDS`): not the
    image, command, env or labels, so neither a group restart (its label and env) nor a new
    image changes it.

    >>> counted({"spec": {"containers": [
    ...     {"name": "trainer", "image": "i", "resources": {"limits": {"cpu": "1"}}}]}})
    {'containers': [{'resources': {'limits': {'cpu': '1'}}}]}
    """
    spec = pod.get("spec") or {}
    out: dict[str, Any] = {k: spec[k] for k in COUNTED_POD_FIELDS if spec.get(k)}
    for key in ("initContainers", "containers"):
        if spec.get(key):
            out[key] = [{k: c[k] for k in COUNTED_CONTAINER_FIELDS if c.get(k)} for c in spec[key]]
    return out


def pod_set_hash(training: Mapping[str, Any], pod: Mapping[str, Any] | None = None) -> str:
    """A hash of what Kueue counts of the training's pod set: `spec.workers` worker pods as
    `builders.build_worker_pod` makes them, podTemplate merged in (`counted`; `pod`: one the
    caller built already, of any restart or image). Kueue's pod sets are immutable: when this
    changes (new `spec.resources`, a GPU sidecar or a node selector added through
    `spec.podTemplate`), the Workload no longer says what the workers need."""
    if pod is None:
        pod = builders.build_worker_pod(training, 0, "", 0)  # image and restart are not counted
    wanted = {"count": _workers(training), "template": counted(pod)}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def _workers(training: Mapping[str, Any]) -> int:
    return int((training.get("spec") or {}).get("workers") or 1)


def build_workload(
    training: Mapping[str, Any], pod: Mapping[str, Any], priority: tuple[str, int] | None
) -> dict[str, Any]:
    """The Workload of `training`: `pod` (worker 0) is the template of all `spec.workers`.

    `priority`: (WorkloadPriorityClass name, its value), read by the caller. The owner
    reference is added by the caller (`kopf.adopt`)."""
    meta = training["metadata"]
    name, uid = meta["name"], str(meta["uid"])
    spec: dict[str, Any] = {
        "queueName": queue_name(training),
        "podSets": [
            {
                "name": POD_SET,
                "count": _workers(training),
                "template": {
                    "metadata": {"labels": dict(pod["metadata"].get("labels") or {})},
                    "spec": pod["spec"],
                },
            }
        ],
        "active": not ((training.get("spec") or {}).get("runPolicy") or {}).get("suspend", False),
    }
    if priority is not None:
        spec["priorityClassRef"] = {
            "group": GROUP,
            "kind": "WorkloadPriorityClass",
            "name": priority[0],
        }
        spec["priority"] = priority[1]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {
            "name": workload_name(name, uid),
            "namespace": meta.get("namespace", "default"),
            "labels": {**labels.common_labels(name), JOB_UID_LABEL: uid},
            "annotations": {POD_SET_HASH_ANNOTATION: pod_set_hash(training, pod)},
            "finalizers": [FINALIZER],
        },
        "spec": spec,
    }


@dataclasses.dataclass(frozen=True)
class Queueing:
    """A training in Kueue's hands: its LocalQueue, and its Workload as cached (None: none)."""

    queue: str
    workload: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class WorkloadState:
    """What the operator needs to know of a training's Workload."""

    name: str
    resource_version: str | None
    generation: int | None
    conditions: tuple[Mapping[str, Any], ...]
    active: bool
    deleting: bool
    finalizers: tuple[str, ...]
    cluster_queue: str | None
    check_states: tuple[str, ...]
    pod_set_hash: str | None

    @property
    def finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    @property
    def quota_reserved(self) -> bool:
        return is_true(self.conditions, "QuotaReserved")

    @property
    def admitted(self) -> bool:
        return is_true(self.conditions, "Admitted")

    @property
    def finished(self) -> bool:
        return is_true(self.conditions, "Finished")

    @property
    def eviction(self) -> Mapping[str, Any] | None:
        """The `Evicted` condition while it is true."""
        cond = get_condition(self.conditions, "Evicted")
        return cond if cond is not None and cond.get("status") == "True" else None

    def waiting_for(self, queue: str) -> str:
        """Why the Workload is not admitted, in Kueue's words when it gave them."""
        if self.quota_reserved:
            return f"quota reserved in ClusterQueue {self.cluster_queue}; admission checks pending"
        cond = get_condition(self.conditions, "QuotaReserved")
        said = str(cond.get("message") or "") if cond else ""
        return said or f"waiting for LocalQueue {queue} to admit Workload {self.name}"


def observe(workload: Mapping[str, Any] | None, training_uid: str) -> WorkloadState | None:
    """The state of `workload` if it belongs to the training of `training_uid`, else None."""
    if workload is None:
        return None
    meta = workload.get("metadata") or {}
    if (meta.get("labels") or {}).get(JOB_UID_LABEL) != training_uid:
        return None
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    return WorkloadState(
        name=str(meta.get("name")),
        resource_version=meta.get("resourceVersion"),
        generation=meta.get("generation"),
        conditions=tuple(status.get("conditions") or ()),
        active=spec.get("active", True) is not False,
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
        cluster_queue=(status.get("admission") or {}).get("clusterQueue"),
        check_states=tuple(str(c.get("state")) for c in status.get("admissionChecks") or ()),
        pod_set_hash=(meta.get("annotations") or {}).get(POD_SET_HASH_ANNOTATION),
    )


def _status_patch(
    state: WorkloadState, changes: Sequence[tuple[str, bool, str, str]], now: str, **fields: Any
) -> dict[str, Any]:
    """A merge patch of the Workload's status setting `changes` (type, status, reason,
    message) among its conditions, guarded by its resourceVersion: when Kueue wrote in between,
    the API server refuses it (409) and the pass is retried on the new state."""
    conditions: Sequence[Mapping[str, Any]] = state.conditions
    for type_, status, reason, message in changes:
        conditions = set_condition(
            conditions, type_, status, reason, message[:32768], now, state.generation
        )
    return {
        "metadata": {"resourceVersion": state.resource_version},
        "status": {"conditions": conditions, **fields},
    }


def release(state: WorkloadState, now: str) -> dict[str, Any]:
    """Give back an evicted Workload's quota once its workers are gone: what Kueue's job
    reconciler does (`UnsetQuotaReservationWithCondition`, `SetRequeuedCondition`)."""
    evicted = state.eviction or {}
    reason, message = str(evicted.get("reason") or ""), str(evicted.get("message") or "")
    changes = [
        ("Requeued", reason in REQUEUED_REASONS, reason, message),
        ("QuotaReserved", False, "Pending", message),
    ]
    if state.admitted:
        checks_ready = all(s == "Ready" for s in state.check_states)
        changes.append(
            ("Admitted", False, "NoReservation", "The workload has no reservation")
            if checks_ready
            else (
                "Admitted",
                False,
                "NoReservationUnsatisfiedChecks",
                "The workload has no reservation and not all checks ready",
            )
        )
    return _status_patch(state, changes, now, admission=None)


def pods_ready(state: WorkloadState, ready: bool, now: str) -> dict[str, Any] | None:
    """The status patch keeping an admitted Workload's `PodsReady` condition true to the
    workers (all Ready or done), as Kueue's job reconciler writes it (None: it already is).
    Kueue's `waitForPodsReady` (timeouts, `blockAdmission`) reads it."""
    cond = get_condition(state.conditions, "PodsReady")
    reason = (cond or {}).get("reason")
    if ready:
        recovering = reason in ("WaitForRecovery", "Recovered")
        wanted = (True, "Recovered" if recovering else "Started", PODS_READY)
    elif cond is not None and (cond.get("status") == "True" or reason == "WaitForRecovery"):
        wanted = (False, "WaitForRecovery", PODS_RECOVERING)
    else:
        wanted = (False, "WaitForStart", PODS_NOT_READY)
    if cond is not None and (cond.get("status") == "True", reason) == wanted[:2]:
        return None
    return _status_patch(state, [("PodsReady", *wanted)], now)


def finish(state: WorkloadState, succeeded: bool, message: str, now: str) -> dict[str, Any]:
    """Mark the Workload finished (Kueue frees its quota)."""
    reason = "Succeeded" if succeeded else "Failed"
    return _status_patch(state, [("Finished", True, reason, message)], now)


def drop_finalizer(state: WorkloadState) -> dict[str, Any]:
    """A merge patch removing the operator's finalizer (guarded by resourceVersion)."""
    kept = [f for f in state.finalizers if f != FINALIZER]
    return {"metadata": {"finalizers": kept, "resourceVersion": state.resource_version}}


def orphaned(
    workloads: Iterable[Mapping[str, Any]], training_uid: str | None
) -> list[tuple[str, dict[str, Any]]]:
    """(name, patch dropping the finalizer) of each Workload still holding it whose training
    is not the one of `training_uid` (None: the training is gone)."""
    out = []
    for workload in workloads:
        uid = str(((workload.get("metadata") or {}).get("labels") or {}).get(JOB_UID_LABEL))
        state = observe(workload, uid)
        if state is not None and state.finalizer and uid != training_uid:
            out.append((state.name, drop_finalizer(state)))
    return out


def pod_set_assignment(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    for assignment in ((workload.get("status") or {}).get("admission") or {}).get(
        "podSetAssignments"
    ) or ():
        if assignment.get("name") == POD_SET:
            return dict(assignment)
    return {}


def assigned_flavors(workload: Mapping[str, Any]) -> list[str]:
    """The ResourceFlavors the admission assigned to the workers, each once."""
    return sorted(set((pod_set_assignment(workload).get("flavors") or {}).values()))


@dataclasses.dataclass(frozen=True)
class Placement:
    """What admission adds to every worker pod (as Kueue's `podset.FromAssignment` does)."""

    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


def placement(workload: Mapping[str, Any], flavors: Mapping[str, Mapping[str, Any]]) -> Placement:
    """Node labels and tolerations of the assigned `flavors` (name → ResourceFlavor), then
    the admission checks' pod set updates.

    >>> wl = {"status": {"admission": {"podSetAssignments": [
    ...     {"name": "workers", "flavors": {"nvidia.com/gpu": "a100"}}]}}}
    >>> rf = {"a100": {"spec": {"nodeLabels": {"gpu": "a100"},
    ...                         "tolerations": [{"key": "gpu", "operator": "Exists"}]}}}
    >>> placement(wl, rf).node_selector
    {'gpu': 'a100'}
    """
    out = Placement()
    for name in assigned_flavors(workload):
        spec = (flavors.get(name) or {}).get("spec") or {}
        out.node_selector.update(spec.get("nodeLabels") or {})
        out.tolerations.extend(t for t in spec.get("tolerations") or () if t not in out.tolerations)
    for check in (workload.get("status") or {}).get("admissionChecks") or ():
        for update in check.get("podSetUpdates") or ():
            if update.get("name") != POD_SET:
                continue
            out.node_selector.update(update.get("nodeSelector") or {})
            out.labels.update(update.get("labels") or {})
            out.annotations.update(update.get("annotations") or {})
            out.tolerations.extend(
                t for t in update.get("tolerations") or () if t not in out.tolerations
            )
    return out


def apply_placement(pod: dict[str, Any], where: Placement) -> dict[str, Any]:
    """`pod` with `where` merged in (the admission wins over the pod template on a key)."""
    meta, spec = pod["metadata"], pod["spec"]
    if where.labels:
        meta["labels"] = {**where.labels, **(meta.get("labels") or {})}
    if where.annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **where.annotations}
    if where.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **where.node_selector}
    if where.tolerations:
        spec["tolerations"] = [
            *(spec.get("tolerations") or ()),
            *(t for t in where.tolerations if t not in (spec.get("tolerations") or ())),
        ]
    return pod
