"""Pure TPU desired state: the GKE pod's placement and the Cloud TPU VM (`spec.tpu`).

TensorFlow on a TPU slice runs *one* training client (TPUStrategy), never a worker group:

* provider `gke`: the single trainer pod goes onto a TPU node pool (node selectors
  `cloud.google.com/gke-tpu-accelerator`/`-topology`, `google.com/tpu` = chips of the topology,
  requests = limits, the `google.com/tpu` taint tolerated) and resolves `TPU_NAME=local`;
* provider `cloud`: a Cloud TPU VM (its id: `tenancy.TrainingRef.node_id`) whose startup script
  (node metadata `startup-script`) runs the trainer image on worker 0 only; on a multi-host slice
  (`-pod-` runtime) the other hosts run the TPU runtime and `TPU_NAME` is the node's name,
  which TPUClusterResolver looks up through the Cloud TPU API.

    >>> chips("2x4"), chips("2x2x1")
    (8, 4)
    >>> tpu_name_for_trainer("bert", "tpu-vm-tf-2.16.1-pjrt"), tpu_name_for_trainer("bert",
    ...     "tpu-vm-tf-2.16.1-pod-pjrt")
    ('local', 'bert')
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from berth_operator.api import BertTrainingSpec, TpuProvider, TpuSpec
from berth_operator.tpu.tenancy import TrainingRef

ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
TPU_RESOURCE = "google.com/tpu"
#: GKE taints TPU nodes with google.com/tpu=present:NoSchedule.
TPU_TOLERATION = {"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: Guest attribute namespace the trainer reports into on a Cloud TPU VM.
GUEST_NAMESPACE = "berth"
CONFIG_PATH_ON_VM = "/etc/berth/config.yaml"
#: OAuth scope of the TPU VM's service account: all of Google Cloud, narrowed by IAM roles.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance"


def chips(topology: str) -> int:
    """TPU chips of a topology: the product of its dimensions."""
    return math.prod(int(d) for d in topology.split("x"))


def is_gke(spec: BertTrainingSpec) -> bool:
    return spec.tpu is not None and spec.tpu.provider == TpuProvider.GKE.value


def is_cloud(spec: BertTrainingSpec) -> bool:
    return spec.tpu is not None and spec.tpu.provider == TpuProvider.CLOUD.value


def tpu_name_for_trainer(node_id: str, runtime_version: str | None) -> str:
    """TPU_NAME for TPUClusterResolver: `local` on one host, the node name on a pod slice."""
    return node_id if "-pod-" in (runtime_version or "") else "local"


def apply_gke(pod: dict[str, Any], tpu: TpuSpec) -> dict[str, Any]:
    """Place a worker pod on a GKE TPU node pool (in place; returns it). Wins over podTemplate."""
    assert tpu.topology is not None  # CEL: required with provider gke
    spec = pod["spec"]
    spec["nodeSelector"] = {
        **(spec.get("nodeSelector") or {}),
        ACCELERATOR_LABEL: tpu.accelerator_type,
        TOPOLOGY_LABEL: tpu.topology,
    }
    tolerations = list(spec.get("tolerations") or [])
    if TPU_TOLERATION not in tolerations:
        tolerations.append(dict(TPU_TOLERATION))
    spec["tolerations"] = tolerations
    count = str(chips(tpu.topology))
    container = next(c for c in spec["containers"] if c["name"] == "trainer")
    resources = container.setdefault("resources", {})
    for part in ("limits", "requests"):
        resources[part] = {**(resources.get(part) or {}), TPU_RESOURCE: count}
    container["env"] = [e for e in container["env"] if e["name"] not in ("TPU_NAME",)] + [
        {"name": "TPU_NAME", "value": "local"},
        {"name": "BERTH_TPU_PROVIDER", "value": TpuProvider.GKE.value},
    ]
    return pod


def parent(tpu: TpuSpec) -> str:
    return f"projects/{tpu.project}/locations/{tpu.zone}"


def node_name(ref: TrainingRef, tpu: TpuSpec) -> str:
    """Full resource name of a training's TPU node."""
    return f"{parent(tpu)}/nodes/{ref.node_id}"


def queued_resource_name(ref: TrainingRef, tpu: TpuSpec) -> str:
    return f"{parent(tpu)}/queuedResources/{ref.node_id}"


def startup_script(
    training: Mapping[str, Any], spec: BertTrainingSpec, image: str, restart: int
) -> str:
    """Bash run by every TPU VM host at boot; only worker 0 starts the trainer container.

    The exit code and final state go to the guest attributes even when the trainer died before
    it could report (the operator finishes the training from them).
    """
    assert spec.tpu is not None
    name = training["metadata"]["name"]
    config = yaml.safe_dump(spec.trainer_config().to_wire(), sort_keys=False)
    tpu_name = tpu_name_for_trainer(
        TrainingRef.of(training["metadata"]).node_id, spec.tpu.runtime_version
    )
    put = (
        'curl -sf -X PUT -H "Metadata-Flavor: Google" --data "$2" '
        f'"{METADATA_URL}/guest-attributes/{GUEST_NAMESPACE}/$1" || true'
    )
    return f"""#!/bin/bash
# Berth: BertTraining {training["metadata"].get("namespace", "default")}/{name}, restart {restart}
set -u
worker=$(curl -sf -H "Metadata-Flavor: Google" \\
  "{METADATA_URL}/attributes/agent-worker-number" || echo 0)
[ "$worker" = "0" ] || exit 0  # the other hosts of a pod slice run the TPU runtime only
put() {{ {put}; }}
mkdir -p /etc/berth
cat > {CONFIG_PATH_ON_VM} <<'BERTH_CONFIG'
{config}BERTH_CONFIG
put state starting
docker run --rm --privileged --net=host -v /etc/berth:/etc/berth:ro \\
  -e TPU_NAME={shlex.quote(tpu_name)} -e BERTH_TPU_PROVIDER=cloud \\
  -e BERTH_TRAINING={shlex.quote(name)} -e BERTH_RESTART={restart} \\
  {shlex.quote(image)} berth-trainer train --config {CONFIG_PATH_ON_VM}
code=$?
put exit_code "$code"
if [ "$code" = "0" ]; then put state succeeded; else put state failed; fi
"""


def node_fields(
    training: Mapping[str, Any],
    spec: BertTrainingSpec,
    image: str,
    restart: int,
    service_account: str | None,
) -> dict[str, Any]:
    """The tpu_v2.Node of a training as a dict (`tpu_v2.Node(node_fields(...))`).

    Its labels name the training (`TrainingRef.labels`: only a node whose `berth-uid` is this
    training's is ever used or deleted). `service_account` (`TpuTenancy.service_account`) is the
    VM's identity, with the cloud-platform scope (IAM decides what it may do); None leaves it to
    the API: the project's Compute Engine default service account.
    """
    tpu = spec.tpu
    assert tpu is not None
    ref = TrainingRef.of(training["metadata"])
    node: dict[str, Any] = {
        "accelerator_type": tpu.accelerator_type,
        "runtime_version": tpu.runtime_version,
        "description": f"berth: BertTraining {ref.namespace}/{ref.name} (uid {ref.uid})",
        "labels": ref.labels,
        "metadata": {"startup-script": startup_script(training, spec, image, restart)},
    }
    if service_account:
        node["service_account"] = {"email": service_account, "scope": [CLOUD_PLATFORM_SCOPE]}
    if tpu.reserved:
        node["scheduling_config"] = {"reserved": True}
    return node
