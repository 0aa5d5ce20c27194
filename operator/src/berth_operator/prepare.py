"""data.prepare on the cluster: the Indexed Job that prepares a training's data, and what it
says about itself (pure: dict in, dict out).

With `spec.data.prepare`, the operator first runs ONE batch/v1 Job `<name>-prepare` of
`data.prepare.workers` indexes; index I runs `berth-trainer prepare --worker I` (slice I of the
input) in a pod made from the worker pod (`builders.pod_from_worker`: same image, volumes,
security context, service account, node selection), so the pod policy a worker meets holds for
it too. Once the Job is Complete the status gets `Prepared=True` and the workers are created;
they read the shards from `data.prepare.output`.

runPolicy maps onto the Job (docs/operator.md, "Preparing the data"):

* backoffLimit → backoffLimitPerIndex (each slice may be retried that often; maxFailedIndexes 0:
  a slice that used up its retries fails the Job); restartPolicy Never → 0 retries.
* The trainer's permanent exit codes fail the Job at once (podFailurePolicy FailJob): under
  OnFailure those the trainer documents (`ExitCode`: config, data, vocabulary...); under
  ExitCode and Never every code the worker policy treats as permanent (1-127 but 42).
* Disruptions (a pod with the DisruptionTarget condition: preempted, evicted, drained) are
  ignored: the slice is retried without spending its retries.

    >>> training = {"metadata": {"name": "bert", "namespace": "ml"},
    ...             "spec": {"vocabulary": "v.txt", "data": {"train": "d/*.txt",
    ...                      "prepare": {"workers": 2, "output": "shards"}},
    ...                      "output": {"dir": "o"}, "checkpoint": {"dir": "c"}, "workers": 1}}
    >>> job = build_prepare_job(training, "img")
    >>> job["metadata"]["name"], job["spec"]["completions"], job["spec"]["completionMode"]
    ('bert-prepare', 2, 'Indexed')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from berth_operator import labels
from berth_operator.api import RestartPolicy, RunPolicy
from berth_operator.builders import (
    CONFIG_PATH,
    CONTAINER_NAME,
    GPU_RESOURCE,
    METRICS_PORT,
    parse_spec,
    pod_from_worker,
)
from berth_operator.workers import MAX_MESSAGE, WorkerState, observe_pod
from berth_trainer.exit_codes import ExitCode, is_retryable

#: The index of the pod, set by the Job controller in every container of an Indexed Job's pod.
INDEX_ENV = "JOB_COMPLETION_INDEX"
PREPARE_COMMAND = [
    "berth-trainer",
    "prepare",
    "--config",
    CONFIG_PATH,
    "--worker",
    f"$({INDEX_ENV})",
    "--metrics-port",
    str(METRICS_PORT),
]
#: Worker-only environment: which worker of which group (a prepare pod is neither) and the
#: GPUs it must see (a prepare pod asks for none).
WORKER_ONLY_ENV = frozenset(
    {"TF_CONFIG", "BERTH_RESTART", "BERTH_WORKER_INDEX", "BERTH_NUM_WORKERS", "BERTH_EXPECTED_GPUS"}
)
#: Accelerators a prepare pod does not ask for: it tokenizes on CPUs.
ACCELERATORS = frozenset({GPU_RESOURCE, "google.com/tpu"})
#: Trainer exit codes that fail the Job at once under restartPolicy OnFailure: the documented
#: permanent ones (a deterministic prepare fails the same way again).
DOCUMENTED_PERMANENT: tuple[int, ...] = tuple(
    sorted(int(c) for c in ExitCode if c != ExitCode.OK and not is_retryable(c))
)
#: ... and under ExitCode and Never: every code the worker restart policy treats as permanent.
PERMANENT: tuple[int, ...] = tuple(c for c in range(1, 128) if not is_retryable(c))


def prepare_job_name(name: str) -> str:
    """The prepare Job of training `name`: `<name>-prepare` (its pods: `<name>-prepare-<i>-*`)."""
    return f"{name}-prepare"


def prepare_labels(name: str) -> dict[str, str]:
    """Labels of the Job and its pods: the training's, with role `prepare` (never a worker)."""
    return labels.role_labels(name, labels.ROLE_PREPARE)


def failure_policy(run_policy: RunPolicy) -> dict[str, Any]:
    """The Job spec fields that carry `run_policy` (see the module docstring).

    >>> failure_policy(RunPolicy(restartPolicy="Never"))["backoffLimitPerIndex"]
    0
    >>> rules = failure_policy(RunPolicy())["podFailurePolicy"]["rules"]
    >>> [r["action"] for r in rules], rules[1]["onExitCodes"]["values"]
    (['Ignore', 'FailJob'], [1, 2, 3, 4, 5, 6, 7])
    """
    never = run_policy.restart_policy == RestartPolicy.NEVER.value
    on_failure = run_policy.restart_policy == RestartPolicy.ON_FAILURE.value
    codes = DOCUMENTED_PERMANENT if on_failure else PERMANENT
    return {
        "backoffLimitPerIndex": 0 if never else run_policy.backoff_limit,
        "maxFailedIndexes": 0,
        # A slice's next pod starts once the last one is gone: one writer per slice at a time.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER_NAME,
                        "operator": "In",
                        "values": list(codes),
                    },
                },
            ]
        },
    }


def _prepare_container(container: dict[str, Any]) -> dict[str, Any]:
    """The worker's trainer container, running `prepare` instead of `train`."""
    container["command"] = list(PREPARE_COMMAND)
    container["ports"] = [
        p for p in container.get("ports") or [] if p.get("containerPort") == METRICS_PORT
    ]
    container["env"] = [e for e in container.get("env") or [] if e["name"] not in WORKER_ONLY_ENV]
    resources = container.get("resources") or {}
    for part in ("limits", "requests"):
        if part in resources:
            resources[part] = {k: v for k, v in resources[part].items() if k not in ACCELERATORS}
            if not resources[part]:
                del resources[part]
    if "resources" in container and not resources:
        del container["resources"]
    return container


def build_prepare_pod_template(training: Mapping[str, Any], default_image: str) -> dict[str, Any]:
    """The Job's pod template: worker 0's pod (podTemplate merged, pod policy defaults) as a
    prepare pod: role `prepare`, no worker identity, no hostname, no accelerators."""
    name = training["metadata"]["name"]
    template_meta, spec = pod_from_worker(training, default_image, prepare_labels(name))
    spec["restartPolicy"] = "Never"
    spec["containers"] = [
        _prepare_container(c) if c["name"] == CONTAINER_NAME else c for c in spec["containers"]
    ]
    return {"metadata": template_meta, "spec": spec}


def build_prepare_job(training: Mapping[str, Any], default_image: str) -> dict[str, Any]:
    """The Indexed Job `<name>-prepare`: data.prepare.workers indexes, all at once."""
    meta = training["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    spec = parse_spec(training)
    if spec.data.prepare is None:
        raise ValueError("spec.data.prepare is not set")
    workers = spec.data.prepare.workers
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": prepare_job_name(name),
            "namespace": namespace,
            "labels": prepare_labels(name),
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            **failure_policy(spec.run_policy),
            "template": build_prepare_pod_template(training, default_image),
        },
    }


@dataclasses.dataclass(frozen=True)
class JobState:
    """What the prepare Job says: how far it is, and whether it finished."""

    name: str
    completions: int
    active: int
    succeeded: int
    failed: int
    complete: bool
    #: The Job failed: (reason, message) of its Failed condition.
    failure: tuple[str, str] | None

    def counts(self) -> dict[str, Any]:
        """status.prepare."""
        return {
            "job": self.name,
            "workers": self.completions,
            "active": self.active,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "summary": f"{self.succeeded}/{self.completions}",
        }


def observe_job(job: Mapping[str, Any]) -> JobState:
    """The state of a (cached) prepare Job.

    >>> observe_job({"metadata": {"name": "b-prepare"}, "spec": {"completions": 2},
    ...              "status": {"succeeded": 2, "conditions": [
    ...                  {"type": "Complete", "status": "True"}]}}).complete
    True
    """
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}

    def true(kind: str) -> Mapping[str, Any] | None:
        found = conditions.get(kind)
        return found if found is not None and found.get("status") == "True" else None

    # FailureTarget comes before Failed (the Job controller first terminates the pods).
    failed = true("Failed") or true("FailureTarget")
    return JobState(
        name=str(job["metadata"]["name"]),
        completions=int((job.get("spec") or {}).get("completions") or 1),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete=true("Complete") is not None,
        failure=None
        if failed is None
        else (str(failed.get("reason") or "Failed"), str(failed.get("message") or "")),
    )


def observe_prepare_pods(pods: Sequence[Mapping[str, Any]]) -> list[WorkerState]:
    """The prepare pods as WorkerStates (index: their slice), by slice."""
    states = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        pod_labels = dict(meta.get("labels") or {})
        index = pod_labels.get(labels.JOB_COMPLETION_INDEX)
        if index is None:
            continue
        state = observe_pod(
            {**pod, "metadata": {**meta, "labels": {**pod_labels, labels.INDEX: index}}}
        )
        if state is not None:
            states.append(state)
    return sorted(states, key=lambda s: (s.index, s.name))


def describe_failure(state: WorkerState) -> str:
    """One line for a failed prepare pod: which slice, its exit code and the trainer's reason.

    >>> w = WorkerState("b-prepare-1-x", 1, 0, "Failed", False, False, None, None, 3, "Error",
    ...                 "a.txt line 7: not UTF-8")
    >>> describe_failure(w)
    'prepare pod b-prepare-1-x (slice 1) failed: exit code 3: a.txt line 7: not UTF-8'
    """
    text = f"prepare pod {state.name} (slice {state.index}) failed"
    if state.exit_code is not None:
        text += f": exit code {state.exit_code}"
        if state.reason and state.reason != "Error":
            text += f" ({state.reason})"
    elif state.reason:
        text += f": {state.reason}"
    if state.message:
        text += f": {state.message.strip()}"
    return text[:MAX_MESSAGE]


def failure_message(job: JobState, pods: Sequence[Mapping[str, Any]]) -> str:
    """status.message of a failed preparation: the first failed pod that says why (its
    termination message), else the Job's own Failed condition."""
    failed = [s for s in observe_prepare_pods(pods) if s.failed and s.disruption is None]
    said = next((s for s in failed if s.message), next(iter(failed), None))
    if said is not None:
        return f"data.prepare: {describe_failure(said)}"[:MAX_MESSAGE]
    reason, message = job.failure or ("Failed", "")
    return f"data.prepare: Job {job.name} failed ({reason}): {message}".rstrip(": ")[:MAX_MESSAGE]


def pending_since(pods: Sequence[Mapping[str, Any]]) -> list[tuple[datetime, WorkerState]]:
    """(created, state) of the prepare pods still Pending: runPolicy.pendingTimeoutSeconds
    applies to them as to workers."""
    return [
        (s.created, s)
        for s in observe_prepare_pods(pods)
        if s.phase == "Pending" and not s.terminating and s.created is not None
    ]


def pending_too_long(
    pods: Sequence[Mapping[str, Any]], now: datetime, timeout_seconds: int
) -> tuple[str, str] | None:
    """(reason, message) the training fails with when a prepare pod has been Pending for more
    than `timeout_seconds` (unschedulable, an image that cannot be pulled), else None."""
    for created, state in pending_since(pods):
        if now >= created + timedelta(seconds=timeout_seconds):
            suffix = f": {state.message}" if state.message else ""
            return state.reason or "PendingTimeout", (
                f"data.prepare: prepare pod {state.name} (slice {state.index}) pending for more "
                f"than {timeout_seconds}s (runPolicy.pendingTimeoutSeconds): "
                f"{state.reason or 'Pending'}{suffix}"
            )[:MAX_MESSAGE]
    return None


@dataclasses.dataclass(frozen=True)
class Preparation:
    """What the caches hold of a training's preparation: its Job (None: not created, or not
    this training's) and the Job's pods."""

    job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()

    @property
    def running(self) -> bool:
        """The Job exists and has neither completed nor failed."""
        if self.job is None:
            return False
        state = observe_job(self.job)
        return not state.complete and state.failure is None
