"""Every label and annotation key the operator reads or writes, in one place.

Keys under `berth.dev/` are Berth's own; `app.kubernetes.io/` keys follow the Kubernetes
recommended labels so generic tooling groups a training's objects.

    >>> worker_selector("bert-base")
    'berth.dev/training=bert-base,berth.dev/role=worker'
"""

from __future__ import annotations

GROUP = "berth.dev"
VERSION = "v1alpha1"
KIND = "BertTraining"
PLURAL = "berttrainings"
SINGULAR = "berttraining"
SHORT_NAMES = ("bt",)
CATEGORIES = ("berth",)

#: Name of the BertTraining that owns the object (pods, service, config map).
TRAINING = "berth.dev/training"
#: Role of a pod within its training: `worker`, `prepare` for the pods of its data.prepare
#: Job (the operator caches both; only workers count as the training's group), or
#: `tensorboard` for its TensorBoard's (spec.tensorboard; not cached).
ROLE = "berth.dev/role"
#: Index of a worker pod, `0` … `workers - 1` (the TF_CONFIG task index).
INDEX = "berth.dev/index"
#: Group restart a pod belongs to (`status.restarts` when it was created). Pods of an older
#: restart are stale and get deleted; this is how a restart survives an operator restart.
RESTART = "berth.dev/restart"

ROLE_WORKER = "worker"
ROLE_PREPARE = "prepare"
ROLE_TENSORBOARD = "tensorboard"
#: The index of an Indexed Job's pod (set by the Job controller): a prepare pod's slice.
JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

#: Kueue's keys (docs/operator.md, "With Kueue"): on a BertTraining, the LocalQueue it is queued
#: in and its WorkloadPriorityClass; on its Workload, the training's UID (as Kueue's own
#: integrations write it) and a hash of what Kueue counts of its pod set (ours; older operators
#: wrote a hash of three spec fields under `berth.dev/pod-set-hash`).
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
POD_SET_HASH = "berth.dev/counted-pod-hash"

APP_NAME = "app.kubernetes.io/name"
APP_INSTANCE = "app.kubernetes.io/instance"
APP_COMPONENT = "app.kubernetes.io/component"
APP_PART_OF = "app.kubernetes.io/part-of"
APP_MANAGED_BY = "app.kubernetes.io/managed-by"

MANAGED_BY = "berth-operator"


def common_labels(training_name: str) -> dict[str, str]:
    """Labels every child of a training carries."""
    return {
        TRAINING: training_name,
        APP_NAME: "berth-trainer",
        APP_INSTANCE: training_name,
        APP_PART_OF: "berth",
        APP_MANAGED_BY: MANAGED_BY,
    }


def role_labels(training_name: str, role: str) -> dict[str, str]:
    """Labels of a training's children of one `role` other than its workers (the prepare Job,
    the TensorBoard) and of their pods: the common ones, with that role."""
    return {**common_labels(training_name), APP_COMPONENT: role, ROLE: role}


def worker_selector(training_name: str) -> str:
    """Label selector (string form) of a training's worker pods."""
    return f"{TRAINING}={training_name},{ROLE}={ROLE_WORKER}"
