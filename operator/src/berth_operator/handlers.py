"""kopf handlers: thin, typed glue between kopf and the pure policy/builders.

Two timers per BertTraining (timers, not change handlers, so that deadlines, pending timeouts
and TTLs fire without waiting for an event, and every pass re-reads the cluster):

* `reconcile` every --reconcile-interval: fresh training + its pods → `policy.reconcile` →
  delete/create pods, record events, one status patch;
* `progress` every --progress-interval while Running: scrape worker 0's /metrics → one
  `status.progress` patch when something changed.

Trainings with `spec.tpu.provider: cloud` have no pods; `tpu_handlers` handles them instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from berth_operator import builders, labels, metrics, outcome, policy, progress, tpu_handlers
from berth_operator.k8s import Cluster
from berth_operator.settings import Settings
from berth_operator.workers import format_time

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
    """What every handler needs, handed over in kopf's `memo`."""

    settings: Settings
    cluster: Cluster
    phases: metrics.PhaseTracker
    #: Cloud TPU API clients by (endpoint, namespace, credentialsSecret, key id).
    tpu_clients: dict[tuple[str, ...], Any] = dataclasses.field(default_factory=dict)


def _ctx(memo: Any) -> Context:
    ctx: Context = memo["context"]
    return ctx


def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # events: ours (kopf.event) and kopf's errors only
    settings.persistence.finalizer = f"{labels.GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 32
    metrics.serve(_ctx(memo).settings.metrics_port)


def track_phase(
    namespace: str | None, name: str, type: str, status: kopf.Status, memo: Any, **_: Any
) -> None:
    """Keep the trainings-by-phase gauge current from the watch stream."""
    phase = None if type == "DELETED" else str(status.get("phase") or "Pending")
    _ctx(memo).phases.set(namespace or "", name, phase)


def reconcile(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    **_: Any,
) -> None:
    """One reconcile pass over a training (see berth_operator.policy)."""
    ctx = _ctx(memo)
    assert namespace is not None  # BertTraining is namespaced
    started = time.monotonic()
    training = ctx.cluster.get_training(namespace, name)  # fresh: never act on a stale status
    if training is None or training["metadata"].get("deletionTimestamp"):
        return
    pods = ctx.cluster.list_worker_pods(namespace, name)
    plan = policy.reconcile(training, pods, datetime.now(UTC))
    old_status = training.get("status") or {}

    deleted = [pod for pod in plan.delete if ctx.cluster.delete_pod(namespace, pod)]
    if deleted:
        metrics.PODS_DELETED.inc(len(deleted))
        kopf.event(
            body,
            type="Normal",
            reason="DeletedWorkers",
            message=f"deleted pods {', '.join(deleted)}",
        )
    if plan.create:
        config_map, service = builders.build_config_map(training), builders.build_service(training)
        kopf.adopt([config_map, service], owner=body)
        ctx.cluster.sync_config_map(config_map)
        ctx.cluster.create(service)
        created = []
        for index in plan.create:
            pod = builders.build_worker_pod(
                training, index, ctx.settings.default_image, plan.restart
            )
            kopf.adopt(pod, owner=body)
            if ctx.cluster.create(pod):
                created.append(pod["metadata"]["name"])
        if created:
            metrics.PODS_CREATED.inc(len(created))
            kopf.event(
                body,
                type="Normal",
                reason="CreatedWorkers",
                message=f"created pods {', '.join(created)} (restart {plan.restart})",
            )
    outcome.record_pass(body, namespace, name, plan.events, plan.restart, old_status, plan.status)
    if plan.delete_training:
        log.info("%s/%s: runPolicy.ttlSecondsAfterFinished passed: deleting", namespace, name)
        ctx.cluster.delete_training(namespace, name)
    else:
        patch.status.update(policy.status_patch(old_status, plan.status))
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


def poll_progress(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: Any,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Scrape worker 0 while Running; never fails (an unreachable endpoint is normal)."""
    if status.get("phase") != "Running":
        return
    ctx = _ctx(memo)
    assert namespace is not None
    pod = ctx.cluster.get_pod(namespace, builders.worker_name(name, 0))
    pod_ip = (pod or {}).get("status", {}).get("podIP")
    if not pod_ip:
        return
    try:
        text = progress.fetch_metrics(
            progress.metrics_url(pod_ip), timeout=min(2.0, ctx.settings.progress_interval)
        )
        batch = int((spec.get("training") or {}).get("globalBatchSize") or 1)
        new = progress.progress_from_metrics(text, global_batch_size=batch)
    except (OSError, ValueError) as error:
        metrics.SCRAPE_FAILURES.inc()
        logger.debug("metrics of %s unavailable: %s", pod_ip, error)
        return
    if progress.progress_changed(status.get("progress"), new):
        patch.status["progress"] = {**new, "updatedAt": format_time(datetime.now(UTC))}


def register(settings: Settings) -> kopf.OperatorRegistry:
    """A kopf registry with every handler, intervals taken from `settings`."""
    registry = kopf.OperatorRegistry()
    resource = (labels.GROUP, labels.VERSION, labels.PLURAL)
    kopf.on.login(registry=registry)(kopf.login_via_client)  # in-cluster, else $KUBECONFIG
    kopf.on.startup(registry=registry)(startup)
    kopf.on.event(*resource, registry=registry)(track_phase)
    # Cloud TPU trainings have no pods: tpu_handlers reconciles them instead.
    not_cloud = tpu_handlers.is_not_cloud
    kopf.timer(
        *resource,
        registry=registry,
        id="reconcile",
        interval=settings.reconcile_interval,
        when=not_cloud,
    )(reconcile)
    kopf.timer(
        *resource,
        registry=registry,
        id="progress",
        interval=settings.progress_interval,
        when=not_cloud,
    )(poll_progress)
    tpu_handlers.register(registry, settings.reconcile_interval)
    return registry
