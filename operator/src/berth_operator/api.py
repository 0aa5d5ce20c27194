"""The BertTraining API (berth.dev/v1alpha1): typed models, the one source of truth.

The spec *is* a trainer config (it subclasses `berth_trainer.config.TrainerConfig`) plus the
fields only a cluster needs: image, workers, resources, podTemplate and runPolicy. The CRD in
`crds/` is generated from these models by `python -m berth_operator.crdgen`; CEL rules and
immutability live here, next to the fields they guard.

    >>> spec = BertTrainingSpec.model_validate({
    ...     "vocabulary": "vocab.txt", "data": {"train": "c/*.txt"}, "output": {"dir": "o"},
    ...     "checkpoint": {"dir": "ckpt"}, "workers": 2})
    >>> spec.run_policy.restart_policy, spec.trainer_config().checkpoint.dir
    ('OnFailure', 'ckpt')
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from berth_trainer.config import ApiModel, ModelConfig, Task, TrainerConfig

#: Trainer fields the spec shares with `TrainerConfig` (what goes into config.yaml).
TRAINER_FIELDS: frozenset[str] = frozenset(TrainerConfig.model_fields)


#: spec.workers: at most this many worker pods.
MAX_WORKERS = 1024
#: metadata.name: at most this many characters. Every name derived from it must stay valid;
#: the tightest is a worker's hostname, `<name>-worker-<index>` (index up to MAX_WORKERS - 1),
#: which must be a DNS label of at most 63 characters: 63 - len("-worker-1023") = 51. The
#: headless Service `<name>` also needs a DNS-1035 label (a letter first).
MAX_NAME_LENGTH = 63 - len(f"-worker-{MAX_WORKERS - 1}")
#: The CRD's root-level rules on metadata.name (the API server allows `self.metadata.name` at
#: the root of a CRD's schema); `berth validate` evaluates the same rules.
NAME_VALIDATIONS: list[dict[str, str]] = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name: must be no more than {MAX_NAME_LENGTH} characters (worker "
        f"pods are named <name>-worker-<index>, and a pod's hostname is at most 63)",
    },
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "metadata.name: must be a DNS-1035 label: lowercase letters, digits and '-', "
        "starting with a letter and ending with a letter or digit (it names the training's "
        "headless Service)",
    },
]


def _immutable(field: str) -> dict[str, Any]:
    """A CEL transition rule that rejects any change of `field` after creation."""
    return {
        "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": f"spec.{field}: field is immutable"}
        ]
    }


class RestartPolicy(enum.StrEnum):
    ON_FAILURE = "OnFailure"
    EXIT_CODE = "ExitCode"
    NEVER = "Never"


class CleanPodPolicy(enum.StrEnum):
    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class RunPolicy(ApiModel):
    """runPolicy: how failures, time limits, suspension and clean-up are handled."""

    restart_policy: RestartPolicy = Field(
        default=RestartPolicy.ON_FAILURE,
        description="restartPolicy: OnFailure restarts the whole worker group after any "
        "failure; ExitCode only after a retryable exit code (128-255, or the trainer's "
        "retryable codes), treating 1-127 as permanent; Never fails at the first failure.",
    )
    backoff_limit: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=3,
        description="backoffLimit: group restarts after worker failures allowed before the "
        "training fails. Disruptions (preemption, eviction, drain, a lost node) do not count.",
    )
    disruption_limit: Annotated[int, Field(ge=0, le=100000)] | None = Field(
        default=None,
        description="disruptionLimit: group restarts after disruptions (a worker preempted, "
        "evicted, drained or on a lost node) allowed before the training fails with reason "
        "DisruptionLimitExceeded; unset: no limit.",
    )
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="activeDeadlineSeconds: seconds from startTime after which a running "
        "training is failed (reason DeadlineExceeded).",
    )
    pending_timeout_seconds: Annotated[int, Field(ge=1)] = Field(
        default=900,
        description="pendingTimeoutSeconds: seconds a worker may stay Pending (unschedulable, "
        "image pull errors) before the training fails.",
    )
    suspend: bool = Field(
        default=False,
        description="suspend: true deletes the workers and marks the training Suspended; "
        "false again recreates them (startTime restarts).",
    )
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="ttlSecondsAfterFinished: seconds after completion when the "
        "BertTraining (and with it every child) is deleted.",
    )
    clean_pod_policy: CleanPodPolicy = Field(
        default=CleanPodPolicy.RUNNING,
        description="cleanPodPolicy: which pods are deleted once the training finished: All, "
        "Running (those still running; finished ones stay for their logs) or None.",
    )


class ResourceRequirements(ApiModel):
    """resources: compute resources of the trainer container of every worker."""

    limits: dict[str, int | str] | None = Field(
        default=None, description="limits: maximum resources, e.g. nvidia.com/gpu: 8."
    )
    requests: dict[str, int | str] | None = Field(
        default=None, description="requests: guaranteed resources (default: the limits)."
    )


class TensorBoardSpec(ApiModel):
    """tensorboard: a TensorBoard for the training (docs/operator.md, "Watching a training")."""

    enabled: bool = Field(
        default=False,
        description="enabled: run a Deployment and Service <name>-tensorboard (port 6006) that "
        "serve TensorBoard over output.dir/tensorboard, with the workers' image, volumes and pod "
        "security, deleted with the training; `kubectl berth tensorboard NAME` forwards to it.",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="resources: of the TensorBoard container (default: requests cpu 100m and "
        "memory 256Mi, limits memory 1Gi).",
    )


class TpuProvider(enum.StrEnum):
    GKE = "gke"
    CLOUD = "cloud"


#: Topologies a single TPU host serves (GKE node pools: v5e/v6e up to 2x4, v4/v5p 2x2x1).
SINGLE_HOST_TOPOLOGIES: tuple[str, ...] = ("1x1", "2x2", "2x4", "1x1x1", "2x2x1")
_TOPOLOGY_LIST = ", ".join(f"'{t}'" for t in SINGLE_HOST_TOPOLOGIES)


#: spec.tpu.project: a GCP project id (domain-scoped ones, `example.com:proj`, included).
GCP_PROJECT_PATTERN = r"^[a-z]([-a-z0-9.:]*[a-z0-9])?$"
#: spec.tpu.serviceAccount: a Google service account's email.
GCP_SERVICE_ACCOUNT_PATTERN = r"^[a-z0-9][-a-z0-9_.]*@[a-z0-9][-a-z0-9.:]*\.gserviceaccount\.com$"


class TpuSpec(ApiModel):
    """tpu: train on a TPU slice with TPUStrategy (one training client) instead of workers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.provider != 'gke' || has(self.topology)",
                    "fieldPath": ".topology",
                    "message": "spec.tpu.topology: required with provider gke "
                    "(the node pool's cloud.google.com/gke-tpu-topology)",
                },
                {
                    "rule": "self.provider != 'gke' || !has(self.topology) || "
                    f"self.topology in [{_TOPOLOGY_LIST}]",
                    "fieldPath": ".topology",
                    "message": "spec.tpu.topology: provider gke supports single-host "
                    f"topologies only ({', '.join(SINGLE_HOST_TOPOLOGIES)}); multi-host "
                    "TensorFlow on GKE TPU node pools is not a documented path, use provider "
                    "cloud for multi-host slices",
                },
                {
                    "rule": "self.provider != 'cloud' || "
                    "(has(self.project) && has(self.zone) && has(self.runtimeVersion))",
                    "fieldPath": ".provider",
                    "message": "spec.tpu: provider cloud requires project, zone and runtimeVersion",
                },
                {
                    "rule": "!(self.spot && self.reserved)",
                    "fieldPath": ".spot",
                    "message": "spec.tpu.spot: spot and reserved are exclusive",
                },
            ]
        }
    )

    provider: TpuProvider = Field(
        description="provider: gke runs the trainer pod on a GKE TPU node pool; cloud creates "
        "a Cloud TPU VM (google-cloud-tpu, tpu_v2) whose startup script runs the trainer."
    )
    accelerator_type: str = Field(
        min_length=1,
        max_length=63,
        description="acceleratorType: gke: the node label cloud.google.com/gke-tpu-accelerator "
        "(e.g. tpu-v5-lite-podslice); cloud: the Cloud TPU accelerator type (e.g. v5litepod-8, "
        "v4-32).",
    )
    topology: str | None = Field(
        default=None,
        pattern=r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$",
        description="topology: chip topology, e.g. 2x4 or 2x2x1; gke: required, the node "
        "label cloud.google.com/gke-tpu-topology (google.com/tpu = product of the dimensions); "
        "cloud: optional (the acceleratorType implies it).",
    )
    runtime_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="runtimeVersion: cloud: the TPU VM software version, e.g. "
        "tpu-vm-tf-2.16.1-pjrt (tpu-vm-tf-2.16.1-pod-pjrt for multi-host slices).",
    )
    project: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=GCP_PROJECT_PATTERN,
        description="project: cloud: GCP project id; the operator refuses a project its "
        "namespace is not allowed (the admin's --tpu-project, chart value tpu.namespaces).",
    )
    zone: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][-a-z0-9]*[a-z0-9]$",
        description="zone: cloud: e.g. us-central2-b.",
    )
    service_account: str | None = Field(
        default=None,
        max_length=254,
        pattern=GCP_SERVICE_ACCOUNT_PATTERN,
        description="serviceAccount: cloud: email of the service account the TPU VM runs as "
        "(it reads the data and writes checkpoints); default: the one the admin pinned for the "
        "namespace (--tpu-service-account), else the project's Compute Engine default service "
        "account. A namespace with a pinned account may name only that one.",
    )
    spot: bool = Field(
        default=False,
        description="spot: cloud: request Spot capacity through a queued resource (preemptible;"
        " preemptions restart from the checkpoint and count against runPolicy.backoffLimit).",
    )
    reserved: bool = Field(
        default=False, description="reserved: cloud: use the project's reserved capacity."
    )
    credentials_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="credentialsSecret: cloud: Secret in the training's namespace whose key "
        "key.json is a service account key for the Cloud TPU API; default: the operator's "
        "Application Default Credentials (workload identity), unless the admin requires each "
        "namespace's own (--tpu-require-credentials-secret).",
    )


class BertTrainingSpec(TrainerConfig):
    """spec: the trainer configuration plus how to run it on the cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.training.globalBatchSize % "
                    "(self.workers * self.training.gradientAccumulationSteps) == 0",
                    "fieldPath": ".training.globalBatchSize",
                    "message": "spec.training.globalBatchSize: must be divisible by "
                    "workers * training.gradientAccumulationSteps",
                },
                {
                    "rule": "self.runPolicy.restartPolicy == 'Never' || has(self.checkpoint.dir)",
                    "fieldPath": ".checkpoint.dir",
                    "message": "spec.checkpoint.dir: required unless runPolicy.restartPolicy "
                    "is Never (restarts resume from it)",
                },
                {
                    "rule": "self.training.sequenceLength <= self.model.maxSequenceLength",
                    "fieldPath": ".training.sequenceLength",
                    "message": "spec.training.sequenceLength: must not exceed "
                    "model.maxSequenceLength",
                },
                {
                    "rule": "self.task != 'pretraining' || "
                    "self.training.maxPredictionsPerSequence <= self.training.sequenceLength",
                    "fieldPath": ".training.maxPredictionsPerSequence",
                    "message": "spec.training.maxPredictionsPerSequence: must not exceed "
                    "training.sequenceLength",
                },
                {
                    "rule": "!has(self.training.stepsPerExecution) || "
                    "(self.training.logEverySteps % self.training.stepsPerExecution == 0 && "
                    "self.checkpoint.everySteps % self.training.stepsPerExecution == 0)",
                    "fieldPath": ".training.stepsPerExecution",
                    "message": "spec.training.stepsPerExecution: must divide "
                    "training.logEverySteps and checkpoint.everySteps",
                },
                {
                    "rule": "!has(self.pretraining) || "
                    "!has(self.pretraining.sentencePrediction) || "
                    "self.pretraining.sentencePrediction == 'none' || "
                    "self.pretraining.packing == 'segmentPairs'",
                    "fieldPath": ".pretraining.sentencePrediction",
                    "message": "spec.pretraining.sentencePrediction: needs pretraining.packing "
                    "segmentPairs",
                },
                {
                    "rule": "self.task != 'classification' || has(self.training.numClasses)",
                    "fieldPath": ".training.numClasses",
                    "message": "spec.training.numClasses: required when task is classification",
                },
                {
                    "rule": "self.task != 'questionAnswering' || "
                    "self.questionAnswering.docStride + self.questionAnswering.maxQueryLength "
                    "+ 3 <= self.training.sequenceLength",
                    "fieldPath": ".questionAnswering.docStride",
                    "message": "spec.questionAnswering.docStride: must not exceed "
                    "training.sequenceLength - questionAnswering.maxQueryLength - 3 (the "
                    "context window)",
                },
                {
                    "rule": "self.task != 'seq2seq' || "
                    "self.seq2seq.maxTargetLength + 3 <= self.training.sequenceLength",
                    "fieldPath": ".seq2seq.maxTargetLength",
                    "message": "spec.seq2seq.maxTargetLength: must leave room for a source "
                    "(maxTargetLength + 3 <= training.sequenceLength)",
                },
                {
                    "rule": "has(self.model.size) || "
                    "(has(self.model.numLayers) && has(self.model.hiddenSize))",
                    "fieldPath": ".model",
                    "message": "spec.model: set size, or numLayers and hiddenSize",
                },
                {
                    "rule": "!has(self.model.numHeads) || !has(self.model.hiddenSize) || "
                    "self.model.hiddenSize % self.model.numHeads == 0",
                    "fieldPath": ".model.numHeads",
                    "message": "spec.model.numHeads: must divide model.hiddenSize",
                },
                {
                    "rule": "!has(self.tpu) || self.workers == 1",
                    "fieldPath": ".workers",
                    "message": "spec.workers: must be 1 with spec.tpu (TPUStrategy runs one "
                    "training client; the slice's hosts are not workers)",
                },
                {
                    "rule": "!has(self.tpu) || !has(self.resources) || "
                    "((!has(self.resources.limits) || "
                    "!self.resources.limits.exists(k, k.startsWith('nvidia.com/'))) && "
                    "(!has(self.resources.requests) || "
                    "!self.resources.requests.exists(k, k.startsWith('nvidia.com/'))))",
                    "fieldPath": ".resources",
                    "message": "spec.resources: GPU resources (nvidia.com/*) and spec.tpu are "
                    "exclusive",
                },
                {
                    "rule": "!has(self.tpu) || self.tpu.provider != 'cloud' || "
                    "(self.data.train.startsWith('gs://') && self.output.dir.startsWith('gs://')"
                    " && (!has(self.checkpoint.dir) || self.checkpoint.dir.startsWith('gs://')))",
                    "fieldPath": ".tpu",
                    "message": "spec.tpu: provider cloud needs data.train, checkpoint.dir and "
                    "output.dir on gs:// (a TPU VM has no access to cluster volumes)",
                },
            ]
        }
    )

    task: Task = Field(
        default=Task.PRETRAINING,
        description=f"{TrainerConfig.model_fields['task'].description} Immutable.",
        json_schema_extra=_immutable("task"),
    )
    model: ModelConfig = Field(
        default_factory=TrainerConfig.model_fields["model"].default_factory,
        description=f"{TrainerConfig.model_fields['model'].description} Immutable.",
        json_schema_extra=_immutable("model"),
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="image: trainer image; default: the operator's --default-image.",
    )
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = Field(
        default=4,
        description="workers: number of worker pods training together with "
        "MultiWorkerMirroredStrategy; 1 runs a single pod without TF_CONFIG. Immutable.",
        json_schema_extra=_immutable("workers"),
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="resources: limits and requests of every worker's trainer."
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        description="allowCpuFallback: true lets a worker whose pod requests nvidia.com/gpu "
        "train on CPU when TensorFlow sees no GPU. By default it exits with code 6 "
        "(GPU missing: a CPU-only trainer image, or no GPU driver on the node) and the "
        "training fails with that message.",
    )
    pod_template: dict[str, Any] | None = Field(
        default=None,
        description="podTemplate: a core/v1 PodTemplateSpec merged into every worker "
        "(metadata labels/annotations, nodeSelector, tolerations, affinity, volumes, env, "
        "volumeMounts of a container named trainer, serviceAccountName, sidecars...). "
        "securityContext merges field by field over Berth's defaults; the merged pod must meet "
        "the cluster's pod policy (Pod Security restricted unless the admin widened it).",
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy,
        description="runPolicy: restart, time-limit, suspension and clean-up policy.",
    )
    tensorboard: TensorBoardSpec | None = Field(
        default=None, description="tensorboard: serve the training's TensorBoard scalars."
    )
    tpu: TpuSpec | None = Field(
        default=None,
        description="tpu: train on a TPU slice (TPUStrategy) instead of multi-worker pods; "
        "needs workers: 1 and no GPU resources. Immutable.",
        json_schema_extra=_immutable("tpu"),
    )

    def trainer_config(self) -> TrainerConfig:
        """The config file every worker reads (the trainer fields of this spec)."""
        return TrainerConfig.model_validate(self.model_dump(include=set(TRAINER_FIELDS)))


class Phase(enum.StrEnum):
    PENDING = "Pending"
    #: data.prepare: the prepare Job runs; the workers are created once it completed.
    PREPARING = "Preparing"
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"


FINISHED_PHASES: frozenset[str] = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


class ConditionType(enum.StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"
    #: data.prepare: True once the prepare Job completed (never prepared again for this training).
    PREPARED = "Prepared"


class Condition(ApiModel):
    """conditions[]: one observation of the training's state, Kubernetes-style."""

    type: ConditionType = Field(
        description="type: Created, Running, Restarting, Succeeded, Failed, Suspended, Queued "
        "or Prepared."
    )
    status: str = Field(
        description="status: True, False or Unknown.",
        json_schema_extra={"enum": ["True", "False", "Unknown"]},
    )
    reason: str | None = Field(default=None, description="reason: CamelCase machine reason.")
    message: str | None = Field(default=None, description="message: human-readable details.")
    last_transition_time: str | None = Field(
        default=None,
        description="lastTransitionTime: when status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="observedGeneration: metadata.generation this is based on."
    )


class WorkerCounts(ApiModel):
    """workers: worker pods of the current group by state."""

    ready: int = Field(default=0, description="ready: workers whose pod is Ready.")
    active: int = Field(default=0, description="active: workers Pending or Running.")
    succeeded: int = Field(default=0, description="succeeded: workers that exited 0.")
    failed: int = Field(default=0, description="failed: workers that failed.")
    summary: str | None = Field(
        default=None, description="summary: ready/total, e.g. 3/3 (printer column)."
    )


class Progress(ApiModel):
    """progress: training progress scraped from worker 0's metrics endpoint (while Preparing:
    the input bytes the prepare pods read, summed over them)."""

    step: int | None = Field(default=None, description="step: optimizer steps done.")
    total_steps: int | None = Field(default=None, description="totalSteps: steps planned.")
    loss: float | None = Field(default=None, description="loss: latest training loss.")
    examples_per_second: float | None = Field(
        default=None, description="examplesPerSecond: recent training throughput."
    )
    percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="percent: share of the planned steps done, 0-100 (printer column %).",
    )
    eta_seconds: int | None = Field(
        default=None, description="etaSeconds: estimated seconds to the last step."
    )
    last_checkpoint_step: int | None = Field(
        default=None, description="lastCheckpointStep: step of the newest checkpoint."
    )
    prepared_bytes: int | None = Field(
        default=None,
        description="preparedBytes: data.prepare: input bytes the prepare pods have read "
        "(berth_prepare_input_bytes summed over them; a finished pod counts its whole slice).",
    )
    input_bytes: int | None = Field(
        default=None,
        description="inputBytes: data.prepare: input bytes of the slices of the prepare pods seen "
        "so far (berth_prepare_input_total_bytes summed over them).",
    )
    summary: str | None = Field(
        default=None,
        description="summary: step/totalSteps, e.g. 120/1000, or while Preparing the share of "
        "the input read, e.g. prepare 42% (printer column).",
    )
    updated_at: str | None = Field(
        default=None,
        description="updatedAt: when these numbers changed last (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class Metric(ApiModel):
    """metrics[]: one validation metric."""

    name: str = Field(description="name: the metric, e.g. accuracy, f1, exact_match, loss.")
    value: float = Field(description="value: its value on the validation set.")


class ValidationStatus(ApiModel):
    """validation: the latest validation metrics (before training, at the end)."""

    step: int | None = Field(default=None, description="step: the step they were taken at.")
    metrics: list[Metric] | None = Field(
        default=None,
        description="metrics: each metric the task computes on data.validation.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    summary: str | None = Field(
        default=None,
        description="summary: the task's headline metric, e.g. f1 0.912 (printer column Metric).",
    )
    updated_at: str | None = Field(
        default=None,
        description="updatedAt: when they were taken (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class TpuStatus(ApiModel):
    """tpu: the TPU a training runs on (provider cloud)."""

    name: str | None = Field(
        default=None, description="name: the Cloud TPU node, projects/P/locations/Z/nodes/N."
    )
    state: str | None = Field(
        default=None,
        description="state: the node's state as the Cloud TPU API reports it (CREATING, READY, "
        "REPAIRING, PREEMPTED, TERMINATED, ...), or NOT_FOUND.",
    )
    health: str | None = Field(
        default=None, description="health: the node's health (HEALTHY, UNHEALTHY_MAINTENANCE...)."
    )
    endpoints: list[str] | None = Field(
        default=None, description="endpoints: the hosts' internal ip:port, worker 0 first."
    )
    operation: str | None = Field(
        default=None, description="operation: the pending create operation, if any."
    )


class QueueStatus(ApiModel):
    """queue: the training's place in Kueue (docs/operator.md, "With Kueue")."""

    name: str | None = Field(default=None, description="name: the LocalQueue.")
    workload: str | None = Field(default=None, description="workload: the Kueue Workload.")
    cluster_queue: str | None = Field(
        default=None, description="clusterQueue: the ClusterQueue that admitted it, if any."
    )


class PrepareStatus(ApiModel):
    """prepare: the data.prepare Indexed Job (docs/operator.md, "Preparing the data")."""

    job: str | None = Field(default=None, description="job: the Job's name, <name>-prepare.")
    workers: int | None = Field(
        default=None, description="workers: its indexes (data.prepare.workers)."
    )
    active: int | None = Field(default=None, description="active: prepare pods running.")
    succeeded: int | None = Field(
        default=None, description="succeeded: indexes done (their slice is written)."
    )
    failed: int | None = Field(
        default=None, description="failed: prepare pods that failed (retried or not)."
    )
    summary: str | None = Field(default=None, description="summary: succeeded/workers, e.g. 1/2.")


class BertTrainingStatus(ApiModel):
    """status: the observed state of the training, written only by the operator."""

    phase: Phase | None = Field(
        default=None,
        description="phase: Pending, Queued (waiting for Kueue to admit it), Preparing (the "
        "data.prepare Job runs), Starting, Running, Restarting, Succeeded, Failed or Suspended.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="conditions: the latest observations of the training's state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    workers: WorkerCounts | None = Field(default=None, description="workers: pod counts.")
    restarts: int | None = Field(
        default=None,
        description="restarts: group restarts after worker failures so far (see "
        "runPolicy.backoffLimit).",
    )
    disruptions: int | None = Field(
        default=None,
        description="disruptions: group restarts after disruptions so far: a worker preempted, "
        "evicted, drained or on a lost node (see runPolicy.disruptionLimit).",
    )
    progress: Progress | None = Field(default=None, description="progress: training progress.")
    validation: ValidationStatus | None = Field(
        default=None, description="validation: the latest validation metrics."
    )
    start_time: str | None = Field(
        default=None,
        description="startTime: when the workers were first created (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    completion_time: str | None = Field(
        default=None,
        description="completionTime: when the training succeeded or failed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="observedGeneration: metadata.generation last acted upon."
    )
    message: str | None = Field(
        default=None, description="message: why the training is in its phase, e.g. a failure."
    )
    tpu: TpuStatus | None = Field(default=None, description="tpu: the training's Cloud TPU.")
    prepare: PrepareStatus | None = Field(
        default=None, description="prepare: the data.prepare Job, while and after it runs."
    )
    queue: QueueStatus | None = Field(
        default=None,
        description="queue: where Kueue queues the training (label kueue.x-k8s.io/queue-name).",
    )
