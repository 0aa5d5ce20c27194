"""spec.tensorboard on the cluster: the Deployment, Service and NetworkPolicy
`<name>-tensorboard` that serve TensorBoard over a training's log folder (pure: dict in, dict
out; owner references are added by the caller).

The trainer writes its TensorBoard scalars to `<output.dir>/tensorboard`
(`berth_trainer.observability`). Whoever can read that folder can serve it, and the workers
can: so the TensorBoard pod is made from worker 0's pod (`builders.pod_from_worker`, podTemplate
merged) the way `berth_operator.prepare` makes a prepare pod — same image, volumes, mounts, env
(credentials), pod and container security, service account, imagePullSecrets and node
selection — with the worker's identity, accelerators and trainer config taken out. A gs://
output.dir is read by TensorFlow's file system (the trainer image has TensorFlow); a folder on
a volume is read through the worker's own mount of it.

TensorBoard keeps running after the training finished (the curves stay viewable) and goes with
the training (ownerReference). It contacts nothing: no version check exists in TensorBoard's
server, its web page is served from the image, and the fast loader (a second binary that reads
gs:// with its own client) is off, so only TensorFlow reads the folder.

    >>> training = {"metadata": {"name": "bert", "namespace": "ml"},
    ...             "spec": {"vocabulary": "v.txt", "data": {"train": "d/*.txt"},
    ...                      "output": {"dir": "gs://b/run"}, "checkpoint": {"dir": "c"},
    ...                      "workers": 2, "tensorboard": {"enabled": True}}}
    >>> deployment = build_deployment(training, "img")
    >>> container = deployment["spec"]["template"]["spec"]["containers"][0]
    >>> container["command"][:3], container["ports"][0]["containerPort"]
    (['tensorboard', '--logdir', 'gs://b/run/tensorboard'], 6006)
    >>> build_service(training)["metadata"]["name"]
    'bert-tensorboard'
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from berth_operator import labels
from berth_operator.builders import (
    CONFIG_VOLUME,
    CONTAINER_NAME,
    GRACE_ENV,
    parse_spec,
    pod_from_worker,
)
from berth_operator.prepare import ACCELERATORS

#: TensorBoard's port, in the pod and on the Service (port name `http`).
PORT = 6006
PORT_NAME = "http"
CONTAINER = "tensorboard"
#: What the trainer writes its scalars under, inside output.dir (berth_trainer.observability).
LOG_SUBDIR = "tensorboard"
#: Resources of the TensorBoard container when spec.tensorboard.resources is not given.
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
#: The trainer's env a TensorBoard has no use for: who a worker is, its cluster, its GPUs, its
#: SIGTERM budget (the user's own env, credentials included, stays).
TRAINER_ONLY_ENV = frozenset(
    {
        "TF_CONFIG",
        "BERTH_NAMESPACE",
        "BERTH_TRAINING",
        "BERTH_RESTART",
        "BERTH_WORKER_INDEX",
        "BERTH_NUM_WORKERS",
        "BERTH_EXPECTED_GPUS",
        "BERTH_METRICS_PORT",
        GRACE_ENV,
    }
)


def tensorboard_name(name: str) -> str:
    """The Deployment, Service and NetworkPolicy of training `name`: `<name>-tensorboard`."""
    return f"{name}-tensorboard"


def tensorboard_labels(name: str) -> dict[str, str]:
    """Labels of the objects and their pods: the training's, with role `tensorboard`."""
    return labels.role_labels(name, labels.ROLE_TENSORBOARD)


def selector(name: str) -> dict[str, str]:
    """The Deployment's and the Service's pod selector (immutable on a Deployment)."""
    return {labels.TRAINING: name, labels.ROLE: labels.ROLE_TENSORBOARD}


def enabled(training: Mapping[str, Any]) -> bool:
    """Whether spec.tensorboard.enabled is true (without validating the rest of the spec)."""
    return bool(((training.get("spec") or {}).get("tensorboard") or {}).get("enabled"))


def log_dir(output_dir: str) -> str:
    """The folder TensorBoard reads: `<output.dir>/tensorboard`.

    >>> log_dir("gs://b/run/"), log_dir("/data/run")
    ('gs://b/run/tensorboard', '/data/run/tensorboard')
    """
    return f"{output_dir.rstrip('/')}/{LOG_SUBDIR}"


def command(output_dir: str) -> list[str]:
    """TensorBoard 2.21 serving `log_dir(output_dir)` on every interface, port 6006."""
    return [
        "tensorboard",
        "--logdir",
        log_dir(output_dir),
        "--bind_all",
        "--port",
        str(PORT),
        # TensorFlow's file system reads the folder (gs:// with the worker's credentials), not
        # the separate data server binary.
        "--load_fast",
        "false",
    ]


def _container(worker: Mapping[str, Any], output_dir: str, resources: Any) -> dict[str, Any]:
    """The worker's trainer container, serving TensorBoard instead of training."""
    container = copy.deepcopy(dict(worker))
    container["name"] = CONTAINER
    container["command"] = command(output_dir)
    container.pop("args", None)
    container["ports"] = [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}]
    container["env"] = [e for e in container.get("env") or [] if e["name"] not in TRAINER_ONLY_ENV]
    if not container["env"]:
        del container["env"]
    container["volumeMounts"] = [
        m for m in container.get("volumeMounts") or [] if m["name"] != CONFIG_VOLUME
    ]
    container["resources"] = resources
    container["readinessProbe"] = {
        "httpGet": {"path": "/", "port": PORT_NAME},
        "periodSeconds": 5,
    }
    return container


def _resources(training: Mapping[str, Any]) -> dict[str, Any]:
    spec = parse_spec(training).tensorboard
    wanted = None if spec is None else spec.resources
    if wanted is None:
        return copy.deepcopy(dict(DEFAULT_RESOURCES))
    resources = wanted.model_dump(by_alias=True, exclude_none=True)
    for part in ("limits", "requests"):  # canonical strings, and no accelerators
        if part in resources:
            resources[part] = {
                k: str(v) for k, v in resources[part].items() if k not in ACCELERATORS
            }
    return resources


def build_pod_template(training: Mapping[str, Any], default_image: str) -> dict[str, Any]:
    """The Deployment's pod template: worker 0's pod (see the module docstring) serving
    TensorBoard, with role `tensorboard`, no worker identity, hostname or trainer config."""
    name = training["metadata"]["name"]
    output_dir = parse_spec(training).output.dir
    template_meta, spec = pod_from_worker(training, default_image, tensorboard_labels(name))
    spec["restartPolicy"] = "Always"
    resources = _resources(training)
    spec["containers"] = [
        _container(c, output_dir, resources) if c["name"] == CONTAINER_NAME else c
        for c in spec["containers"]
    ]
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v["name"] != CONFIG_VOLUME]
    return {"metadata": template_meta, "spec": spec}


def build_deployment(training: Mapping[str, Any], default_image: str) -> dict[str, Any]:
    """The Deployment `<name>-tensorboard`: one replica; Recreate, so that a volume mounted
    ReadWriteOnce is never wanted by two pods at once."""
    meta = training["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": tensorboard_name(name),
            "namespace": meta.get("namespace", "default"),
            "labels": tensorboard_labels(name),
        },
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector(name)},
            "template": build_pod_template(training, default_image),
        },
    }


def build_service(training: Mapping[str, Any]) -> dict[str, Any]:
    """The Service `<name>-tensorboard`: port 6006 (`http`) of the TensorBoard pod, inside the
    cluster only (`kubectl berth tensorboard NAME` port-forwards to it)."""
    meta = training["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": tensorboard_name(name),
            "namespace": meta.get("namespace", "default"),
            "labels": tensorboard_labels(name),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(name),
            "ports": [
                {"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def build_all(training: Mapping[str, Any], default_image: str) -> list[dict[str, Any]]:
    """The Deployment and the Service (the NetworkPolicy is
    `networkpolicy.build_tensorboard_network_policy`, made unless policies are turned off)."""
    return [build_deployment(training, default_image), build_service(training)]
