"""kopf handlers of the pod path: watch, index, enqueue. Thin, typed glue.

kopf watches BertTrainings and the worker pods (server-side label selector), keeps both in
in-memory indexes, and every watch event puts the training's key on the controller's work queue
(`berth_operator.controller`), which reconciles from those indexes. There are no timers: a pass
runs because something changed, or because a time-based rule of that training is due.

The data.prepare Jobs (batch/v1, label `berth.dev/training`) are watched and indexed the same
way, and the pod watch takes their pods too (role `prepare`): a Job's progress wakes its training.

With `--kueue`, the Kueue Workloads the operator made (label `berth.dev/training`) are watched
and indexed the same way: admission and eviction wake their training.

Trainings with `spec.tpu.provider: cloud` have no pods; `berth_operator.tpu.handlers` handles
them instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from berth_operator import kueue, labels
from berth_operator.context import from_memo
from berth_operator.controller import POD_COALESCE, Controller
from berth_operator.settings import Settings
from berth_operator.tpu import handlers as tpu_handlers

log = logging.getLogger(__name__)

TRAININGS = (labels.GROUP, labels.VERSION, labels.PLURAL)
PODS = ("", "v1", "pods")
WORKLOADS = (kueue.GROUP, kueue.VERSION, kueue.WORKLOADS)
JOBS = ("batch", "v1", "jobs")
TRAINING_LABEL = labels.TRAINING
#: Only Berth's worker and data.prepare pods are watched (and cached): the selector is applied
#: by the API server.
WORKER_SELECTOR = f"{labels.TRAINING},{labels.ROLE} in ({labels.ROLE_WORKER},{labels.ROLE_PREPARE})"
#: kopf's threads for sync work: logging in, and the Cloud TPU path's few API calls.
SYNC_THREADS = 4
#: Index names: kopf hands each index to handlers as a keyword argument of this name.
TRAINING_INDEX, POD_INDEX, WORKLOAD_INDEX = "berth_trainings", "berth_pods", "berth_workloads"
JOB_INDEX = "berth_jobs"


def startup(settings: kopf.OperatorSettings, memo: Any, **indexes: Any) -> None:
    settings.posting.level = logging.WARNING  # events: ours (kopf.event) and kopf's errors only
    settings.persistence.finalizer = f"{labels.GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.GROUP, key="last-handled-configuration"
    )
    settings.watching.label_selectors[PODS] = WORKER_SELECTOR
    settings.watching.label_selectors[WORKLOADS] = TRAINING_LABEL
    settings.watching.label_selectors[JOBS] = TRAINING_LABEL
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.execution.max_workers = SYNC_THREADS
    ctx = from_memo(memo)
    ctx.controller = Controller(
        ctx.settings,
        ctx.cluster,
        indexes[TRAINING_INDEX],
        indexes[POD_INDEX],
        indexes.get(WORKLOAD_INDEX),  # with --kueue only
        jobs=indexes[JOB_INDEX],
    )


async def cleanup(memo: Any, **_: Any) -> None:
    controller = from_memo(memo).controller
    if controller is not None:
        await controller.stop()


#: What the caches keep of each object: what `policy.reconcile` reads, and what `kopf.adopt`
#: and `kopf.event` need of an owner. Of a pod's spec only its node: a worker's state is in its
#: status.
TRAINING_META = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "labels",
    "deletionTimestamp",
)
POD_META = (
    "name",
    "namespace",
    "uid",
    "labels",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
)
#: The node a worker runs on: whether that node is lost decides a group restart.
POD_SPEC = ("nodeName",)
POD_STATUS = ("phase", "conditions", "containerStatuses", "podIP", "reason", "message")
WORKLOAD_META = (*TRAINING_META, "finalizers", "annotations")


JOB_META = (*TRAINING_META, "ownerReferences")
JOB_STATUS = ("conditions", "active", "ready", "succeeded", "failed")


def _pick(mapping: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: mapping[k] for k in keys if mapping and k in mapping}


def cached_training(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": _pick(body.get("metadata"), TRAINING_META),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def cached_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": _pick(body.get("metadata"), POD_META),
        "spec": _pick(body.get("spec"), POD_SPEC),
        "status": _pick(body.get("status"), POD_STATUS),
    }


def cached_workload(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Workload without its pod sets (the operator wrote them; it reads only the rest)."""
    spec = body.get("spec") or {}
    return {
        "metadata": _pick(body.get("metadata"), WORKLOAD_META),
        "spec": {k: spec[k] for k in ("active", "queueName") if k in spec},
        "status": _pick(body.get("status"), ("conditions", "admission", "admissionChecks")),
    }


def cached_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """A data.prepare Job without its pod template (what `prepare.observe_job` reads)."""
    return {
        "metadata": _pick(body.get("metadata"), JOB_META),
        "spec": _pick(body.get("spec"), ("completions",)),
        "status": _pick(body.get("status"), JOB_STATUS),
    }


async def index_training(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """BertTrainings by (namespace, name), as the controller reads them."""
    return {(namespace or "", name): cached_training(body)}


async def index_pod(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Worker pods by (namespace, training), only what `workers.observe_pod` reads."""
    return {(namespace or "", labels[TRAINING_LABEL]): cached_pod(body)}


async def index_workload(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Kueue Workloads by (namespace, training)."""
    return {(namespace or "", labels[TRAINING_LABEL]): cached_workload(body)}


async def index_job(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """data.prepare Jobs by (namespace, training)."""
    return {(namespace or "", labels[TRAINING_LABEL]): cached_job(body)}


async def training_event(
    namespace: str | None,
    name: str,
    type: str,
    status: kopf.Status,
    spec: kopf.Spec,
    memo: Any,
    **_: Any,
) -> None:
    """Keep the trainings-by-phase gauge current; reconcile pod trainings on any change."""
    ctx = from_memo(memo)
    phase = None if type == "DELETED" else str(status.get("phase") or "Pending")
    ctx.phases.set(namespace or "", name, phase)
    if ctx.controller is not None and not tpu_handlers.is_cloud(spec):
        ctx.controller.enqueue((namespace or "", name))


async def pod_event(
    namespace: str | None, labels: kopf.Labels, type: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    """A worker pod changed: reconcile its training. A deleted one leaves the index: the
    controller keeps its last state for the next pass if it was disrupted."""
    controller = from_memo(memo).controller
    if controller is not None:
        key = (namespace or "", labels[TRAINING_LABEL])
        if type == "DELETED":
            controller.deleted_pod(key, cached_pod(body))
        controller.enqueue(key, within=POD_COALESCE)


async def workload_event(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """Kueue admitted, evicted or finished a Workload: reconcile its training."""
    controller = from_memo(memo).controller
    if controller is not None:
        controller.enqueue((namespace or "", labels[TRAINING_LABEL]))


async def job_event(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """A data.prepare Job progressed, completed or failed: reconcile its training."""
    controller = from_memo(memo).controller
    if controller is not None:
        controller.enqueue((namespace or "", labels[TRAINING_LABEL]), within=POD_COALESCE)


def register(settings: Settings) -> kopf.OperatorRegistry:
    """A kopf registry with every handler of both paths."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)  # in-cluster, else $KUBECONFIG
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.index(*TRAININGS, registry=registry, id=TRAINING_INDEX, when=tpu_handlers.is_not_cloud)(
        index_training
    )
    kopf.index(*PODS, registry=registry, id=POD_INDEX, labels={TRAINING_LABEL: kopf.PRESENT})(
        index_pod
    )
    kopf.on.event(*TRAININGS, registry=registry, id="training-event")(training_event)
    kopf.on.event(*PODS, registry=registry, id="pod-event", labels={TRAINING_LABEL: kopf.PRESENT})(
        pod_event
    )
    owned = {TRAINING_LABEL: kopf.PRESENT}
    kopf.index(*JOBS, registry=registry, id=JOB_INDEX, labels=owned)(index_job)
    kopf.on.event(*JOBS, registry=registry, id="job-event", labels=owned)(job_event)
    if settings.kueue:
        kopf.index(*WORKLOADS, registry=registry, id=WORKLOAD_INDEX, labels=owned)(index_workload)
        kopf.on.event(*WORKLOADS, registry=registry, id="workload-event", labels=owned)(
            workload_event
        )
    tpu_handlers.register(registry, settings.reconcile_interval)
    return registry
