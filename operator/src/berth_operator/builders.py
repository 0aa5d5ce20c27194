"""Pure builders: a BertTraining (as a dict) → the children it needs (as dicts).

No I/O and no kopf here, so the operator and the local runner (`berth run`) build identical
objects. Owner references are added by the caller (`kopf.adopt` in the operator).

    >>> training = {"metadata": {"name": "bert", "namespace": "ml"},
    ...             "spec": {"vocabulary": "v.txt", "data": {"train": "d"}, "output": {"dir": "o"},
    ...                      "checkpoint": {"dir": "c"}, "workers": 2}}
    >>> tf_config("bert", "ml", 2, 1)["cluster"]["worker"]
    ['bert-worker-0.bert.ml.svc:2222', 'bert-worker-1.bert.ml.svc:2222']
    >>> [p["metadata"]["name"] for p in build_worker_pods(training, "img", restart=0)]
    ['bert-worker-0', 'bert-worker-1']
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml

from berth_operator import labels
from berth_operator.api import BertTrainingSpec, TpuProvider
from berth_operator.podtemplate import merge_pod_template
from berth_operator.tpu.node import apply_gke

TF_PORT = 2222
TF_PORT_NAME = "tf-port"
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
CONTAINER_NAME = "trainer"
CONFIG_KEY = "config.yaml"
CONFIG_DIR = "/etc/berth"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CONFIG_VOLUME = "berth-config"
TMP_VOLUME = "berth-tmp"
TRAIN_COMMAND = ["berth-trainer", "train", "--config", CONFIG_PATH]
#: UID/GID the Berth images run as (non-root; the Dockerfile's USER).
RUN_AS_USER = 65532
#: Extended resource of NVIDIA GPUs (the device plugin's name).
GPU_RESOURCE = "nvidia.com/gpu"
#: The trainer's SIGTERM budget: the pod's terminationGracePeriodSeconds (Kubernetes' default 30).
GRACE_ENV, DEFAULT_GRACE_SECONDS = "BERTH_TERMINATION_GRACE_SECONDS", 30


def parse_spec(training: Mapping[str, Any]) -> BertTrainingSpec:
    """The validated spec of a BertTraining body (raises pydantic.ValidationError)."""
    return BertTrainingSpec.model_validate(training.get("spec") or {})


def worker_name(name: str, index: int) -> str:
    """Fixed name of worker `index`: `<name>-worker-<index>`."""
    return f"{name}-worker-{index}"


def config_map_name(name: str) -> str:
    return f"{name}-config"


def worker_host(name: str, namespace: str, index: int) -> str:
    """DNS name of a worker through the headless service: `<pod>.<name>.<ns>.svc`."""
    return f"{worker_name(name, index)}.{name}.{namespace}.svc"


def tf_config(name: str, namespace: str, workers: int, index: int) -> dict[str, Any]:
    """TF_CONFIG of worker `index` for MultiWorkerMirroredStrategy."""
    return {
        "cluster": {
            "worker": [f"{worker_host(name, namespace, i)}:{TF_PORT}" for i in range(workers)]
        },
        "task": {"type": "worker", "index": index},
        "environment": "cloud",
    }


def _meta(training: Mapping[str, Any]) -> tuple[str, str]:
    meta = training["metadata"]
    return meta["name"], meta.get("namespace", "default")


def build_config_map(training: Mapping[str, Any]) -> dict[str, Any]:
    """ConfigMap `<name>-config` holding the trainer config as YAML under `config.yaml`."""
    name, namespace = _meta(training)
    config = parse_spec(training).trainer_config().to_wire()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(name),
            "namespace": namespace,
            "labels": labels.common_labels(name),
        },
        "data": {CONFIG_KEY: yaml.safe_dump(config, sort_keys=False)},
    }


def build_service(training: Mapping[str, Any]) -> dict[str, Any]:
    """Headless Service `<name>` giving every worker a stable DNS name (even before Ready)."""
    name, namespace = _meta(training)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels.common_labels(name)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {labels.TRAINING: name, labels.ROLE: labels.ROLE_WORKER},
            "ports": [
                {"name": TF_PORT_NAME, "port": TF_PORT, "targetPort": TF_PORT},
                {"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    }


def worker_labels(name: str, index: int, restart: int) -> dict[str, str]:
    return {
        **labels.common_labels(name),
        labels.APP_COMPONENT: labels.ROLE_WORKER,
        labels.ROLE: labels.ROLE_WORKER,
        labels.INDEX: str(index),
        labels.RESTART: str(restart),
    }


def build_worker_pod(
    training: Mapping[str, Any], index: int, default_image: str, restart: int
) -> dict[str, Any]:
    """Worker pod `<name>-worker-<index>` of group restart `restart`, podTemplate merged in."""
    name, namespace = _meta(training)
    spec = parse_spec(training)
    env: list[dict[str, Any]] = [
        # Who this worker is: the trainer labels its metrics with it (berth_trainer_info), so
        # the operator never takes another process's endpoint for this worker's.
        {"name": "BERTH_NAMESPACE", "value": namespace},
        {"name": "BERTH_TRAINING", "value": name},
        {"name": "BERTH_RESTART", "value": str(restart)},
        {"name": "BERTH_WORKER_INDEX", "value": str(index)},
        {"name": "BERTH_NUM_WORKERS", "value": str(spec.workers)},
        {"name": "BERTH_METRICS_PORT", "value": str(METRICS_PORT)},
    ]
    if spec.workers > 1:
        env.append(
            {
                "name": "TF_CONFIG",
                "value": json.dumps(tf_config(name, namespace, spec.workers, index)),
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or default_image,
        "command": list(TRAIN_COMMAND),
        "ports": [
            {"name": TF_PORT_NAME, "containerPort": TF_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            # The root filesystem is read-only; HOME, Keras' and TensorFlow's caches are /tmp.
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # The rest of every container's lock-down is podtemplate.CONTAINER_SECURITY.
        "securityContext": {"readOnlyRootFilesystem": True},
    }
    if spec.resources is not None:
        container["resources"] = spec.resources.model_dump(by_alias=True, exclude_none=True)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(name, index),
            "namespace": namespace,
            "labels": worker_labels(name, index, restart),
        },
        "spec": {
            "hostname": worker_name(name, index),
            "subdomain": name,
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [
                {
                    "name": CONFIG_VOLUME,
                    "configMap": {
                        "name": config_map_name(name),
                        "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                    },
                },
                {"name": TMP_VOLUME, "emptyDir": {}},
            ],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "fsGroup": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "enableServiceLinks": False,
            # No API token in the workers unless a service account was asked for (workload
            # identity, IRSA and the like read it).
            "automountServiceAccountToken": bool(
                (spec.pod_template or {}).get("spec", {}).get("serviceAccountName")
            ),
        },
    }
    merged = merge_pod_template(pod, spec.pod_template)
    if spec.tpu is not None and spec.tpu.provider == TpuProvider.GKE.value:
        apply_gke(merged, spec.tpu)
    if not spec.allow_cpu_fallback:
        _expect_gpus(merged)
    _tell_grace(merged)
    return _quantities_as_strings(merged)


def requested_gpus(container: Mapping[str, Any]) -> int:
    """GPUs (`nvidia.com/gpu`) a container asks for: its limit, else its request.

    >>> requested_gpus({"resources": {"limits": {"nvidia.com/gpu": "2"}}})
    2
    """
    resources = container.get("resources") or {}
    for part in ("limits", "requests"):
        value = (resources.get(part) or {}).get(GPU_RESOURCE)
        if value is not None:
            return int(value)
    return 0


def _expect_gpus(pod: dict[str, Any]) -> None:
    """Tell the trainer how many GPUs its pod asked for: it fails fast when it sees fewer."""
    for container in pod["spec"]["containers"]:
        gpus = requested_gpus(container) if container["name"] == CONTAINER_NAME else 0
        if gpus:
            container["env"].append({"name": "BERTH_EXPECTED_GPUS", "value": str(gpus)})


def _tell_grace(pod: dict[str, Any]) -> None:
    """Tell the trainer how long a SIGTERM leaves it before the SIGKILL (the pod's
    terminationGracePeriodSeconds): it starts a checkpoint on SIGTERM only if the save fits."""
    grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    for container in pod["spec"]["containers"]:
        env = container.setdefault("env", [])
        if container["name"] == CONTAINER_NAME and not any(e["name"] == GRACE_ENV for e in env):
            env.append({"name": GRACE_ENV, "value": str(grace)})


def _quantities_as_strings(pod: dict[str, Any]) -> dict[str, Any]:
    """Resource quantities in their canonical string form (`8`, not 8), as the API returns."""
    for key in ("containers", "initContainers"):
        for container in pod["spec"].get(key) or []:
            resources = container.get("resources") or {}
            for part in ("limits", "requests"):
                if resources.get(part):
                    resources[part] = {k: str(v) for k, v in resources[part].items()}
    return pod


def pod_from_worker(
    training: Mapping[str, Any], default_image: str, role_labels: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker 0's pod (podTemplate merged, pod policy defaults) as the start of the pod template
    of a child with another role (the prepare Job, the TensorBoard): (metadata, spec). The
    metadata keeps the worker's labels but its index and restart, with `role_labels` over them,
    and its annotations; the spec loses the hostname and subdomain of a worker's DNS name."""
    pod = copy.deepcopy(build_worker_pod(training, 0, default_image, restart=0))
    meta = pod["metadata"]
    kept = {
        k: v
        for k, v in (meta.get("labels") or {}).items()
        if k not in (labels.INDEX, labels.RESTART)
    }
    template_meta: dict[str, Any] = {"labels": {**kept, **role_labels}}
    if meta.get("annotations"):
        template_meta["annotations"] = meta["annotations"]
    spec = pod["spec"]
    for field in ("hostname", "subdomain"):
        spec.pop(field, None)
    return template_meta, spec


def build_worker_pods(
    training: Mapping[str, Any], default_image: str, restart: int
) -> list[dict[str, Any]]:
    """Every worker pod of group restart `restart`."""
    workers = parse_spec(training).workers
    return [build_worker_pod(training, i, default_image, restart) for i in range(workers)]
