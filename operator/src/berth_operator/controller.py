"""The pod path's controller: reconcile a training when it or one of its pods changes.

What controller-runtime does with informers and a work queue, on kopf's watches and indexes:

* kopf watches BertTrainings and worker pods and keeps them in two in-memory indexes
  (`handlers.py`); every watch event `enqueue`s the training's key.
* A few workers take keys from a coalescing `WorkQueue` (one key is never worked on twice at
  once) and run the pure `policy.reconcile` over the cached training and pods. Only what the plan
  changes is written: pods deleted and created, events posted, one status patch.
* Writes show up in the caches a moment later. Until they do, the key waits (`Expectations`):
  the next pass never acts on its own stale view.
* A worker that is not Ready, or is being deleted, has its Node read (a second's cache): a node
  the node lifecycle controller gave up on restarts the group as a disruption, and its pods are
  deleted with grace 0 (`berth_operator.nodes`). A group whose workers are all Ready costs no read.
* Time-based rules (activeDeadlineSeconds, pendingTimeoutSeconds, ttlSecondsAfterFinished) put
  the key back at their due time (`policy.next_due`). Nothing polls.
* Progress: every --progress-interval, worker 0 of each Running training is scraped at the
  address the pod cache knows, and its metrics are used only if `berth_trainer_info` names that
  very worker. An endpoint that does not answer is tried less and less often (up to a minute).
  Its progress and validation metrics go to status in one write, when they changed; once worker
  0 succeeded, the reconcile pass writes the final figures from its termination message.
  A Preparing training's running prepare pods are scraped the same way and their input bytes
  summed (`progress.prepare_progress`).
* data.prepare: the training's prepare Job (`berth_operator.prepare`) and its pods are cached
  like the workers (a Job watch by label, the pod watch with role `prepare`); their changes
  wake the training, whose pass decides from them when the workers may start.

While nothing changes, the API server sees nothing from the operator but its open watches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import kopf
from kubernetes.client.exceptions import ApiException

from berth_operator import (
    builders,
    kueue,
    labels,
    metrics,
    networkpolicy,
    outcome,
    policy,
    prepare,
    progress,
    refusal,
    tensorboard,
)
from berth_operator.api import Phase
from berth_operator.expectations import Expectations
from berth_operator.k8s import (
    Cluster,
    CreateRefusedError,
    KueueMissingError,
    NamespaceTerminatingError,
    controller_ref,
)
from berth_operator.nodes import NodeHealth, node_health
from berth_operator.settings import Settings
from berth_operator.workers import format_time
from berth_operator.workqueue import QueueClosed, WorkQueue
from berth_trainer.observability import identity

log = logging.getLogger(__name__)

#: (namespace, training name).
Key = tuple[str, str]
#: kopf's index shape: key → the cached objects under it.
Index = Mapping[Key, Iterable[Mapping[str, Any]]]
T = TypeVar("T")

#: Trainings reconciled at once. Few: a burst of new trainings is worked through while the
#: API server also serves whoever created them (see docs/benchmarks.md).
WORKERS = 2
#: API calls in flight (a pass creates or deletes its pods in parallel); also the HTTP pool.
CONCURRENCY = 8
#: Seconds a pod event waits for the events of its sibling pods before the training's pass.
POD_COALESCE = 0.05
#: How long a pass waits for the caches to show the last pass's writes before it trusts the API.
EXPECTATION_TIMEOUT = 30.0
#: A failed pass is retried after this many seconds, doubling per failure up to
#: `Settings.retry_max`.
RETRY_BASE = 0.5
#: Scrapes of an endpoint that does not answer back off up to this many seconds.
SCRAPE_BACKOFF_MAX = 60.0
#: Seconds a Node read serves the passes of every training with a worker on that node.
NODE_CACHE_SECONDS = 1.0
#: Phases that record a failure: before writing one, check the namespace is not being deleted.
ALARMS = frozenset({Phase.RESTARTING.value, Phase.FAILED.value})


class WorkloadNotCreatedError(Exception):
    """The training's Kueue Workload cannot be created until the user acts (the message)."""


class Controller:
    """Work queue, expectations and workers of the pod path (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        trainings: Index,
        pods: Index,
        workloads: Index | None = None,
        workers: int = WORKERS,
        concurrency: int = CONCURRENCY,
        jobs: Index | None = None,
    ) -> None:
        self.settings, self.cluster = settings, cluster
        #: `pods`: the trainings' worker and data.prepare pods (label berth.dev/role).
        self.trainings, self.pods = trainings, pods
        #: Kueue Workloads by training (with --kueue; else never read).
        self.workloads: Index = workloads if workloads is not None else {}
        #: data.prepare Jobs by training.
        self.jobs: Index = jobs if jobs is not None else {}
        #: (bytes read, slice bytes) last scraped of each prepare pod, by training.
        self.prepare_bytes: dict[Key, dict[str, tuple[int, int]]] = {}
        self.workers, self.concurrency = workers, concurrency
        self.queue: WorkQueue[Key] = WorkQueue()
        self.expectations: dict[Key, Expectations] = {}
        self.retries: dict[Key, int] = {}
        #: Trainings (key → uid) whose namespace is being deleted: left alone until they go.
        self.doomed: dict[Key, str] = {}
        #: Trainings (key → uid) the API server no longer has but the index still holds: kopf
        #: does not drop objects deleted while a watch was re-listing.
        self.gone: dict[Key, str] = {}
        self.scrape_failures: dict[Key, int] = {}
        self.scrape_after: dict[Key, float] = {}
        #: Node name → (health, loop time read).
        self.node_cache: dict[str, tuple[NodeHealth, float]] = {}
        #: The last state of disrupted worker pods deleted since their training's last pass
        #: (name → pod): one evicted and deleted within a coalescing window is a disruption, not
        #: a worker that vanished.
        self.tombstones: dict[Key, dict[str, Mapping[str, Any]]] = {}
        #: spec.tensorboard: (training uid, enabled) as last made so (created, or deleted).
        self.tensorboards: dict[Key, tuple[str, bool]] = {}
        #: The last message of a refused TensorBoard create, by training (warned once).
        self.tensorboard_refused: dict[Key, str] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="berth-api"
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and the progress loop (once).

        Called from the first watch-event handler, not at start-up: kopf runs event handlers
        only once both indexes hold the initial listing, so no pass ever sees a training without
        its pods; and the tasks inherit the handler's context, through which `kopf.event` posts.
        """
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"berth-worker-{i}")
            for i in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._progress_loop(), name="berth-progress"))

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def enqueue(self, key: Key, within: float = 0.0) -> None:
        """Something about this training changed (or may have): reconcile it `within` seconds.

        A pod event waits POD_COALESCE for its siblings: the workers of a group are created,
        scheduled and started together, and one pass (one status write) serves them all.
        """
        self.start()
        if within > 0:
            self.queue.add_at(key, asyncio.get_running_loop().time() + within)
        else:
            self.queue.add(key)

    def deleted_pod(self, key: Key, pod: Mapping[str, Any]) -> None:
        """Worker `pod` (its last state) was deleted: keep it for the next pass if it says why."""
        if policy.disruption_of(pod) is not None:
            self.tombstones.setdefault(key, {})[pod["metadata"]["name"]] = pod

    # -- the cache ---------------------------------------------------------------------------

    def training(self, key: Key) -> Mapping[str, Any] | None:
        return next(iter(self.trainings.get(key) or ()), None)

    def _pods(self, key: Key, role: str) -> list[Mapping[str, Any]]:
        return [
            pod
            for pod in self.pods.get(key) or ()
            if (pod["metadata"].get("labels") or {}).get(labels.ROLE) == role
        ]

    def worker_pods(self, key: Key) -> list[Mapping[str, Any]]:
        return self._pods(key, labels.ROLE_WORKER)

    def prepare_pods(self, key: Key) -> list[Mapping[str, Any]]:
        return self._pods(key, labels.ROLE_PREPARE)

    def prepare_job(self, key: Key, training: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The cached data.prepare Job of `training` (a deleted namesake's may linger)."""
        if training is None:
            return None
        uid = training["metadata"].get("uid")
        return next(
            (
                job
                for job in self.jobs.get(key) or ()
                if (ref := controller_ref(job)) is not None and ref.get("uid") == uid
            ),
            None,
        )

    def preparation(self, key: Key, training: Mapping[str, Any]) -> prepare.Preparation:
        """The training's prepare Job and that Job's pods (not a deleted namesake's)."""
        job = self.prepare_job(key, training)
        uid = None if job is None else job["metadata"].get("uid")
        pods = [
            pod
            for pod in self.prepare_pods(key)
            if (ref := controller_ref(pod)) is not None and ref.get("uid") == uid
        ]
        return prepare.Preparation(job, pods)

    def workload(self, key: Key, training: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The cached Workload of `training` (one of a deleted namesake's may linger)."""
        cached = list(self.workloads.get(key) or ())
        if training is None:
            return next(iter(cached), None)
        uid = str(training["metadata"].get("uid"))
        return next((w for w in cached if kueue.observe(w, uid) is not None), None)

    def queueing(self, key: Key, training: Mapping[str, Any]) -> kueue.Queueing | None:
        """How Kueue holds `training`: None without --kueue or without the queue label."""
        queue = kueue.queue_name(training) if self.settings.kueue else None
        return None if queue is None else kueue.Queueing(queue, self.workload(key, training))

    def forget(self, key: Key) -> None:
        for table in (
            self.expectations,
            self.retries,
            self.doomed,
            self.scrape_failures,
            self.scrape_after,
            self.tombstones,
            self.prepare_bytes,
            self.tensorboards,
            self.tensorboard_refused,
        ):
            table.pop(key, None)
        self.queue.forget(key)

    # -- workers -----------------------------------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking API call on the controller's own threads (one per pooled connection)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                key = await self.queue.get()
            except QueueClosed:
                return
            try:
                await self.sync(key)
                self.retries.pop(key, None)
            except Exception as error:
                retry = self.retries.get(key, 0)
                self.retries[key] = retry + 1
                delay = min(self.settings.retry_max, RETRY_BASE * 2**retry)
                log.warning("%s/%s: pass failed (retry in %.1fs): %s", *key, delay, error)
                self.queue.add_at(key, loop.time() + delay)
            finally:
                self.queue.done(key)

    async def sync(self, key: Key) -> None:
        """One reconcile pass of `key` from the caches (see berth_operator.policy)."""
        loop = asyncio.get_running_loop()
        training, pods = self.training(key), self.worker_pods(key)
        ghost = self.gone.get(key)
        if training is not None and ghost == training["metadata"].get("uid"):
            training = None  # the API server said it is gone; the index has not heard (relist)
        elif ghost is not None:
            del self.gone[key]
        waiting = self.expectations.get(key)
        if waiting is not None:
            seen = waiting.met(
                training, pods, self.workload(key, training), self.prepare_job(key, training)
            )
            if not seen and loop.time() < waiting.deadline:
                self.queue.add_at(key, waiting.deadline)  # a cache event usually comes first
                return
            del self.expectations[key]
        await self._let_go(key, training)
        if training is None:
            self.forget(key)
            await self._orphans(key, pods)
            return
        meta = training["metadata"]
        if meta.get("deletionTimestamp") or self.doomed.get(key) == meta.get("uid"):
            return
        started = time.monotonic()
        namespace = key[0]
        tombstones = dict(self.tombstones.get(key) or {})
        queueing = self.queueing(key, training)
        plan = policy.reconcile(
            training,
            pods,
            datetime.now(UTC),
            queueing,
            pod_policy=self.settings.pod_policy_for(namespace),
            health=await self._health(policy.suspect_nodes(pods)),
            deleted=list(tombstones.values()),
            preparation=self.preparation(key, training),
        )
        old_status = training.get("status") or {}
        phase = plan.status.get("phase")
        try:
            if (
                phase in ALARMS
                and phase != old_status.get("phase")
                and await self._io(self.cluster.namespace_terminating, namespace)
            ):
                raise NamespaceTerminatingError(namespace)
            expected = await self._apply(key, training, pods, plan, old_status, queueing)
        except NamespaceTerminatingError:
            log.debug("%s/%s: namespace is being deleted: leaving the training alone", *key)
            self.doomed[key] = str(meta.get("uid"))
            return
        await self._tensorboard(key, training)
        for pod in tombstones:  # weighed by this pass
            self.tombstones.get(key, {}).pop(pod, None)
        if not expected.empty:
            self.expectations[key] = expected
        self._schedule(key, {**training, "status": {**old_status, **plan.status}}, pods)
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        log.debug(
            "%s/%s reconciled: %s, create %s, delete %s",
            *key,
            phase,
            plan.create,
            plan.delete,
        )

    async def _health(self, names: list[str]) -> dict[str, NodeHealth]:
        """The health of nodes `names`, read at most once a NODE_CACHE_SECONDS."""
        now = asyncio.get_running_loop().time()
        stale = [
            n for n in names if now - self.node_cache.get(n, (None, -1e9))[1] > NODE_CACHE_SECONDS
        ]
        if stale:  # and forget the nodes not read for a minute (not on every pass)
            read = await asyncio.gather(*(self._io(self.cluster.read_node, n) for n in stale))
            for name, (_, seen) in list(self.node_cache.items()):
                if now - seen > 60 * NODE_CACHE_SECONDS:
                    del self.node_cache[name]
            for name, node in zip(stale, read, strict=True):
                self.node_cache[name] = (node_health(node), now)
        return {n: self.node_cache[n][0] for n in names}

    async def _orphans(self, key: Key, pods: list[Mapping[str, Any]]) -> None:
        """Delete the workers of a training that is gone, rather than leave them to the
        garbage collector, which deletes at its client's rate limit (tens of objects a second).
        Each delete is conditional on the pod's UID: a new training of the same name keeps its
        pods. The headless Service and the ConfigMap are left to the garbage collector; so is
        a Kueue Workload, once its finalizer is dropped (`_let_go`)."""
        doomed = [
            pod["metadata"]
            for pod in pods
            if not pod["metadata"].get("deletionTimestamp")
            and any(  # made by a BertTraining (the garbage collector would delete it too)
                ref.get("kind") == labels.KIND and ref.get("controller")
                for ref in pod["metadata"].get("ownerReferences") or ()
            )
        ]
        await self._delete_pods(key[0], [(m["name"], m.get("uid")) for m in doomed])

    async def _let_go(self, key: Key, training: Mapping[str, Any] | None) -> None:
        """Drop the finalizer of Workloads whose training is gone (a namesake may be here now),
        so that the garbage collector deletes them. A 409 (the cache was behind) is left to the
        next event."""
        uid = None if training is None else str(training["metadata"].get("uid"))
        for name, patch in kueue.orphaned(self.workloads.get(key) or (), uid):
            with contextlib.suppress(ApiException):
                await self._io(self.cluster.patch_workload, key[0], name, patch)

    async def _delete_pods(
        self, namespace: str, pods: list[tuple[str, str | None]], grace: int | None = None
    ) -> list[str]:
        """Delete (name, uid-or-None) pods in parallel (with `grace` seconds, when given); the
        names that were still there."""
        done = await asyncio.gather(
            *(self._io(self.cluster.delete_pod, namespace, name, uid, grace) for name, uid in pods)
        )
        deleted = [name for (name, _), ok in zip(pods, done, strict=True) if ok]
        metrics.PODS_DELETED.inc(len(deleted))
        return deleted

    async def _apply(
        self,
        key: Key,
        training: Mapping[str, Any],
        pods: list[Mapping[str, Any]],
        plan: policy.Plan,
        old_status: Mapping[str, Any],
        queueing: kueue.Queueing | None,
    ) -> Expectations:
        """Carry out `plan`: delete, create, post events, write the Workload and the status.
        What to expect after."""
        namespace, name = key
        # For kopf.event and kopf.adopt (children copy the owner's labels: not Kueue's).
        owner = kopf.Body(kueue.without_kueue_labels(training))  # type: ignore[arg-type]
        uids = {p["metadata"]["name"]: p["metadata"].get("uid") for p in pods}
        deleted = await self._delete_pods(
            namespace, [(pod, None) for pod in plan.delete], plan.delete_grace
        )
        if deleted:
            kopf.event(
                owner,
                type="Normal",
                reason="DeletedWorkers",
                message=f"deleted pods {', '.join(deleted)}",
            )
        # With their UIDs: a pod of that name made after our read is not on the dead node.
        dead = [(pod, uids.get(pod)) for pod in plan.force_delete]
        if forced := await self._delete_pods(namespace, dead, grace=0):
            kopf.event(
                owner,
                type="Warning",
                reason="ForceDeletedWorkers",
                message=f"deleted pods {', '.join(forced)} with grace 0: their node is lost",
            )
        if plan.delete_prepare_job is not None:
            job = self.prepare_job(key, training)
            uid = None if job is None else job["metadata"].get("uid")
            if await self._io(self.cluster.delete_job, namespace, plan.delete_prepare_job, uid):
                kopf.event(
                    owner,
                    type="Normal",
                    reason="DeletedPrepareJob",
                    message=f"deleted Job {plan.delete_prepare_job} and its pods",
                )
        workload = None if queueing is None else queueing.workload
        created, refused = await self._create(owner, plan, workload) if plan.create else ([], None)
        if plan.create_prepare_job and refused is None:
            refused = await self._create_prepare(owner)
        if created:
            metrics.PODS_CREATED.inc(len(created))
            kopf.event(
                owner,
                type="Normal",
                reason="CreatedWorkers",
                message=f"created pods {', '.join(created)} (restart {plan.restart})",
            )
        if refused is not None:  # the user must act: say so, once per distinct message
            plan.status, warn = refusal.refused(
                old_status,
                plan.status,
                refused,
                format_time(datetime.now(UTC)),
                training["metadata"].get("generation"),
            )
            if warn:
                message = str(plan.status["message"])  # cut to the status's length
                kopf.event(owner, type="Warning", reason=refusal.REASON, message=message)
        outcome.record_pass(owner, namespace, name, plan.events, old_status, plan.status)
        expected = Expectations(
            created=frozenset(
                created if refused else (builders.worker_name(name, i) for i in plan.create)
            ),
            deleted=frozenset(
                str(uids[p]) for p in (*plan.delete, *plan.force_delete) if uids.get(p)
            ),
            deadline=asyncio.get_running_loop().time() + EXPECTATION_TIMEOUT,
            prepare_job_created=plan.create_prepare_job and refused is None,
        )
        problem = None
        if queueing is not None:
            expected, problem = await self._write_workload(
                owner, training, workload, plan, expected
            )
        if plan.delete_training:
            log.info("%s/%s: runPolicy.ttlSecondsAfterFinished passed: deleting", *key)
            await self._io(self.cluster.delete_training, namespace, name)
            return Expectations(training_gone=True, deadline=expected.deadline)
        patch = policy.status_patch(old_status, plan.status)
        if patch:
            version = await self._io(self.cluster.patch_status, namespace, name, patch)
            if version is None:  # deleted while kopf's watch was away: never act on it again
                self.gone[key] = str(owner["metadata"].get("uid"))
                self.queue.add(key)  # to delete its pods
                return Expectations()
            expected = dataclasses.replace(expected, resource_version=version)
        if refused is not None:  # retried with the work queue's backoff, once the status is seen
            self.expectations[key] = expected
            raise CreateRefusedError(refused)
        if problem is not None:  # retried with the work queue's backoff
            raise WorkloadNotCreatedError(problem)
        return expected

    async def _write_workload(
        self,
        owner: kopf.Body,
        training: Mapping[str, Any],
        workload: Mapping[str, Any] | None,
        plan: policy.Plan,
        expected: Expectations,
    ) -> tuple[Expectations, str | None]:
        """Create the Workload or patch it, as `plan` says: `expected` plus what to see of it,
        and why it could not be created (a WorkloadPriorityClass that does not exist: the
        message goes to the status and an event)."""
        namespace = owner["metadata"]["namespace"]
        if plan.create_workload:
            problem = await self._create_workload(owner, training, plan)
            if problem is not None:
                plan.status["message"] = problem
                kopf.event(owner, type="Warning", reason="WorkloadNotCreated", message=problem)
                return expected, problem
            return dataclasses.replace(expected, workload_created=True), None
        if workload is None:
            return expected, None
        name, version = workload["metadata"]["name"], None
        if plan.workload_status:
            version = await self._io(
                self.cluster.patch_workload, namespace, name, plan.workload_status, True
            )
        if plan.workload_patch:
            version = await self._io(
                self.cluster.patch_workload, namespace, name, plan.workload_patch
            )
        if plan.delete_workload:
            await self._io(self.cluster.delete_workload, namespace, name)
            return expected, None  # its delete event wakes the training: a new one is made
        return dataclasses.replace(expected, workload_version=version), None

    async def _create_workload(
        self, owner: kopf.Body, training: Mapping[str, Any], plan: policy.Plan
    ) -> str | None:
        """Create the training's Workload; None, or why it cannot be created yet."""
        priority = None
        if (wanted := kueue.priority_class(training)) is not None:
            found = await self._io(self.cluster.get_kueue_object, kueue.PRIORITY_CLASSES, wanted)
            if found is None:
                return f"label {kueue.PRIORITY_LABEL}: WorkloadPriorityClass {wanted} not found"
            priority = (wanted, int(found.get("value") or 0))
        pod = builders.build_worker_pod(owner, 0, self.settings.default_image, plan.restart)
        workload = kueue.build_workload(training, pod, priority)
        kopf.adopt(workload, owner=owner)
        try:
            await self._io(self.cluster.create_workload, workload)
        except KueueMissingError as error:
            return str(error)
        return None

    async def _create(
        self, owner: kopf.Body, plan: policy.Plan, workload: Mapping[str, Any] | None
    ) -> tuple[list[str], str | None]:
        """The ConfigMap, the headless Service, the NetworkPolicy (unless turned off) and the
        missing worker pods (placed where Kueue's admission says, when `workload` admitted
        them): names created, and why the API server refused the rest (no pod is created while
        the ConfigMap, Service or NetworkPolicy is)."""
        config_map, service = builders.build_config_map(owner), builders.build_service(owner)
        # Before any worker exists: its TF port runs whatever graph it is sent.
        isolation = (
            [networkpolicy.build_network_policy(owner, self.settings.metrics_peers)]
            if self.settings.network_policy
            else []
        )
        kopf.adopt([config_map, service, *isolation], owner=owner)
        try:
            await asyncio.gather(
                self._io(self.cluster.sync_config_map, config_map),
                self._io(self.cluster.create, service),
                *(self._io(self.cluster.create, policy_) for policy_ in isolation),
            )
        except CreateRefusedError as error:
            return [], str(error)
        new = [
            builders.build_worker_pod(owner, i, self.settings.default_image, plan.restart)
            for i in plan.create
        ]
        if workload is not None:
            names = kueue.assigned_flavors(workload)
            found = await asyncio.gather(
                *(self._io(self.cluster.get_kueue_object, kueue.FLAVORS, n) for n in names)
            )
            flavors = {n: f or {} for n, f in zip(names, found, strict=True)}
            where = kueue.placement(workload, flavors)
            new = [kueue.apply_placement(pod, where) for pod in new]
        kopf.adopt(new, owner=owner)
        done = await asyncio.gather(
            *(self._io(self.cluster.create, pod) for pod in new), return_exceptions=True
        )
        refused = [str(e) for e in done if isinstance(e, CreateRefusedError)]
        for result in done:
            if isinstance(result, BaseException) and not isinstance(result, CreateRefusedError):
                raise result
        created = [pod["metadata"]["name"] for pod, ok in zip(new, done, strict=True) if ok is True]
        return created, next(iter(refused), None)

    async def _create_prepare(self, owner: kopf.Body) -> str | None:
        """The ConfigMap (the prepare pods read it), the prepare pods' NetworkPolicy (unless
        turned off) and the data.prepare Job: None, or why the API server refused them."""
        config_map = builders.build_config_map(owner)
        isolation = (
            [networkpolicy.build_prepare_network_policy(owner, self.settings.metrics_peers)]
            if self.settings.network_policy
            else []
        )
        job = prepare.build_prepare_job(owner, self.settings.default_image)
        kopf.adopt([config_map, *isolation, job], owner=owner)
        try:
            await asyncio.gather(
                self._io(self.cluster.sync_config_map, config_map),
                *(self._io(self.cluster.create, policy_) for policy_ in isolation),
            )
            if await self._io(self.cluster.create, job):
                spec = job["spec"]
                kopf.event(
                    owner,
                    type="Normal",
                    reason="CreatedPrepareJob",
                    message=f"created Job {job['metadata']['name']} ({spec['completions']} "
                    f"indexes, backoffLimitPerIndex {spec['backoffLimitPerIndex']})",
                )
        except CreateRefusedError as error:
            return str(error)
        return None

    async def _tensorboard(self, key: Key, training: Mapping[str, Any]) -> None:
        """spec.tensorboard: create the TensorBoard Deployment, Service and NetworkPolicy
        (`berth_operator.tensorboard`) once it is enabled, delete them once it is disabled; each
        only when the wanted state differs from what this operator last made so (after an
        operator restart: creates that find them are no-ops; a training that never enabled it
        costs nothing). Not while the pod policy refuses the pod it would be made from."""
        uid = str(training["metadata"].get("uid"))
        wanted = tensorboard.enabled(training)
        spec = training.get("spec") or {}
        if self.tensorboards.get(key) == (uid, wanted):
            return
        if not wanted:  # made so by this operator, or said so explicitly (enabled: false)
            if key in self.tensorboards or "tensorboard" in spec:
                await self._delete_tensorboard(key, training)
            self.tensorboards[key] = (uid, False)
            return
        owner = kopf.Body(kueue.without_kueue_labels(training))  # type: ignore[arg-type]
        deployment, service = tensorboard.build_all(owner, self.settings.default_image)
        level = self.settings.pod_policy_for(key[0])
        if policy.pod_policy_violations(deployment["spec"]["template"], level):
            return  # the workers are refused too: their refusal is in the status
        isolation = (
            [networkpolicy.build_tensorboard_network_policy(owner)]
            if self.settings.network_policy
            else []
        )
        kopf.adopt([*isolation, deployment, service], owner=owner)
        try:  # the policy first: nothing reaches the pod before it is in force
            for obj in (*isolation, service, deployment):
                await self._io(self.cluster.create, obj)
        except CreateRefusedError as error:
            message = f"spec.tensorboard: {error}"
            if self.tensorboard_refused.get(key) != message:
                self.tensorboard_refused[key] = message
                kopf.event(owner, type="Warning", reason="TensorBoardNotCreated", message=message)
            return
        self.tensorboard_refused.pop(key, None)
        self.tensorboards[key] = (uid, True)
        kopf.event(
            owner,
            type="Normal",
            reason="CreatedTensorBoard",
            message=f"created Deployment and Service {tensorboard.tensorboard_name(key[1])}: "
            f"TensorBoard over {tensorboard.log_dir(str(spec['output']['dir']))}",
        )

    async def _delete_tensorboard(self, key: Key, training: Mapping[str, Any]) -> None:
        """Delete the training's TensorBoard objects (only those it owns)."""
        namespace, name = key
        uid = str(training["metadata"].get("uid"))
        kinds = (
            "Deployment",
            "Service",
            *(("NetworkPolicy",) if self.settings.network_policy else ()),
        )
        done = await asyncio.gather(
            *(
                self._io(
                    self.cluster.delete_owned,
                    kind,
                    namespace,
                    tensorboard.tensorboard_name(name),
                    uid,
                )
                for kind in kinds
            )
        )
        if any(done):
            kopf.event(
                kopf.Body(training),  # type: ignore[arg-type]
                type="Normal",
                reason="DeletedTensorBoard",
                message=f"spec.tensorboard disabled: deleted {tensorboard.tensorboard_name(name)}",
            )

    def _schedule(
        self, key: Key, training: Mapping[str, Any], pods: list[Mapping[str, Any]]
    ) -> None:
        """Put `key` back when its next time-based rule is due."""
        due = policy.next_due(training, pods, self.prepare_pods(key))
        if due is None:
            return
        # Status times have second precision: wake just after the rule's moment, never in a
        # tight loop on a rule that is already past (the pass acted on it).
        delay = max((due - datetime.now(UTC)).total_seconds() + 0.05, 1.0)
        self.queue.add_at(key, asyncio.get_running_loop().time() + delay)

    # -- progress ----------------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        interval = self.settings.progress_interval
        while True:
            await asyncio.sleep(interval)
            now = asyncio.get_running_loop().time()
            targets, preparing = [], []
            for key in list(self.trainings):
                training = self.training(key)
                phase = None if training is None else (training.get("status") or {}).get("phase")
                if training is not None and phase == Phase.PREPARING.value:
                    preparing.append((key, training))
                if training is None or phase != Phase.RUNNING.value:
                    continue
                if now < self.scrape_after.get(key, 0.0):
                    continue
                chief = self._chief(key, training)
                if chief is not None:
                    targets.append((key, training, chief))
            if targets or preparing:
                await asyncio.gather(
                    *(self._scrape(*target) for target in targets),
                    *(self._scrape_prepare(*target) for target in preparing),
                )

    def _chief(self, key: Key, training: Mapping[str, Any]) -> str | None:
        """The pod IP of worker 0 of the current group, from the pod cache."""
        restart = str(policy.group(training.get("status") or {}))
        for pod in self.worker_pods(key):
            pod_labels = pod["metadata"].get("labels") or {}
            if pod_labels.get(labels.INDEX) == "0" and pod_labels.get(labels.RESTART) == restart:
                ip = (pod.get("status") or {}).get("podIP")
                return str(ip) if ip else None
        return None

    async def _fetch(self, url: str) -> str:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=min(2.0, self.settings.progress_interval)),
                connector=aiohttp.TCPConnector(limit=4 * self.concurrency, force_close=True),
            )
        async with self._http.get(url) as response:
            response.raise_for_status()
            return (await response.content.read(1 << 20)).decode("utf-8", errors="replace")

    async def _scrape(self, key: Key, training: Mapping[str, Any], ip: str) -> None:
        """Scrape worker 0 and write `status.progress` when it changed; never raises."""
        namespace, name = key
        status = training.get("status") or {}
        url = progress.metrics_url(ip)
        want = identity(namespace, name, policy.group(status), worker=0)
        try:
            text = await self._fetch(url)
            seen = progress.identity_from_metrics(text)
            if seen != want:
                raise ValueError(f"{url} is {seen or 'unlabelled'}, not {want}")
            spec = training.get("spec") or {}
            batch = int((spec.get("training") or {}).get("globalBatchSize", 1))
            new = progress.progress_from_metrics(text, global_batch_size=batch)
            validation = progress.validation_from_metrics(text, spec.get("task"))
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as error:
            metrics.SCRAPE_FAILURES.inc()
            failures = self.scrape_failures[key] = self.scrape_failures.get(key, 0) + 1
            backoff = min(SCRAPE_BACKOFF_MAX, self.settings.progress_interval * 2 ** (failures - 1))
            self.scrape_after[key] = asyncio.get_running_loop().time() + backoff
            log.debug("%s/%s: metrics unavailable: %s", *key, error)
            return
        self.scrape_failures.pop(key, None)
        self.scrape_after.pop(key, None)
        stamp = format_time(datetime.now(UTC))
        patch: dict[str, Any] = {}  # one status write for both
        if progress.progress_changed(status.get("progress"), new):
            patch["progress"] = {**new, "updatedAt": stamp}
        if validation and progress.validation_changed(status.get("validation"), validation):
            patch["validation"] = {**validation, "updatedAt": stamp}
        now = (self.training(key) or training).get("status") or {}
        if now.get("phase") != Phase.RUNNING.value:
            return  # finished while scraping: the final figures are the pass's to write
        if patch:
            with contextlib.suppress(Exception):  # the next scrape tries again
                await self._io(self.cluster.patch_status, namespace, name, patch)

    async def _scrape_prepare(self, key: Key, training: Mapping[str, Any]) -> None:
        """Scrape the running prepare pods of a Preparing training and write the summed input
        bytes to `status.progress` when they changed; never raises. A pod that succeeded counts
        its whole slice; one that failed counts nothing (its slice is redone)."""
        namespace, name = key
        pods = self.prepare_pods(key)
        phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pods}
        seen = {
            pod: (total if phases[pod] == "Succeeded" else read, total)
            for pod, (read, total) in (self.prepare_bytes.get(key) or {}).items()
            if phases.get(pod) in ("Running", "Succeeded")
        }
        live = [
            (p["metadata"]["name"], str(p["status"]["podIP"]))
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")
        ]
        read = await asyncio.gather(*(self._prepare_bytes(key, ip) for _, ip in live))
        seen.update({pod: got for (pod, _), got in zip(live, read, strict=True) if got})
        self.prepare_bytes[key] = seen
        new = progress.prepare_progress(seen)
        status = training.get("status") or {}
        if progress.progress_changed(status.get("progress"), new):
            entry = {**new, "updatedAt": format_time(datetime.now(UTC))}
            with contextlib.suppress(Exception):  # the next scrape tries again
                await self._io(self.cluster.patch_status, namespace, name, {"progress": entry})

    async def _prepare_bytes(self, key: Key, ip: str) -> tuple[int, int] | None:
        """(read, slice) bytes of the prepare pod at `ip`; None when it does not answer or says
        it belongs to another training."""
        url = progress.metrics_url(ip)
        try:
            text = await self._fetch(url)
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as error:
            metrics.SCRAPE_FAILURES.inc()
            log.debug("%s/%s: prepare metrics unavailable at %s: %s", *key, url, error)
            return None
        seen = progress.identity_from_metrics(text) or {}
        if any(seen.get(k, v) != v for k, v in (("namespace", key[0]), ("training", key[1]))):
            return None
        return progress.prepare_bytes_from_metrics(text)
