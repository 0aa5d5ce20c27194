"""spec.tpu.provider gke on the control plane: admission rules and the pod on the KWOK TPU
node (kwok-tpu-0: tpu-v5-lite-podslice, 2x2, google.com/tpu 4, taint google.com/tpu)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.kwok import terminate_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

GKE = {"provider": "gke", "acceleratorType": "tpu-v5-lite-podslice", "topology": "2x2"}
CLOUD = {
    "provider": "cloud",
    "acceleratorType": "v4-8",
    "runtimeVersion": "tpu-vm-tf-2.16.1-pjrt",
    "project": "p",
    "zone": "us-central2-b",
}


def tpu_manifest(name: str, tpu: dict[str, Any], workers: int = 1, **spec: Any) -> dict[str, Any]:
    body = manifest(name, workers=workers, **spec)
    if "resources" not in spec:
        del body["spec"]["resources"]
    body["spec"]["tpu"] = tpu
    return body


REJECTED = [
    ("multi-host-gke", tpu_manifest("bad", {**GKE, "topology": "4x4"}), "multi-host TensorFlow"),
    ("gke-without-topology", tpu_manifest("bad", {**GKE, "topology": None}), "spec.tpu.topology"),
    ("workers", tpu_manifest("bad", GKE, workers=3), "spec.workers: must be 1 with spec.tpu"),
    (
        "gpu",
        tpu_manifest("bad", GKE, resources={"limits": {"nvidia.com/gpu": 1}}),
        "spec.resources: GPU resources",
    ),
    (
        "cloud-without-project",
        tpu_manifest("bad", {**CLOUD, "project": None}),
        "cloud requires project, zone and runtimeVersion",
    ),
    (
        "cloud-local-data",
        tpu_manifest("bad", CLOUD, data={"train": "/data/*.txt"}),
        "needs data.train, checkpoint.dir and output.dir on gs://",
    ),
]


@pytest.mark.parametrize(("body", "message"), [pytest.param(b, m, id=i) for i, b, m in REJECTED])
def test_invalid_tpu_specs_are_rejected_at_admission(
    crd: str, trainings: Trainings, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as error:
        trainings.create(body)
    assert error.value.status == 422 and message in error.value.body


def test_tpu_is_immutable(crd: str, trainings: Trainings) -> None:
    trainings.create(tpu_manifest("imm", GKE))
    with pytest.raises(ApiException) as error:
        trainings.patch("imm", {"spec": {"tpu": {"topology": "2x4"}}})
    assert "spec.tpu: field is immutable" in error.value.body


def test_gke_pod_lands_on_the_tpu_node(operator: Operator, trainings: Trainings) -> None:
    trainings.create(tpu_manifest("tpu-gke", GKE))
    (pod,) = wait_for(
        lambda: len(p := trainings.pods("tpu-gke")) == 1 and p[0].spec.node_name and p,
        timeout=30,
        what="the TPU pod scheduled",
    )
    assert pod.spec.node_name == "kwok-tpu-0"
    assert pod.spec.node_selector == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    (container,) = pod.spec.containers
    assert container.resources.limits == {"google.com/tpu": "4"}
    assert container.resources.requests == {"google.com/tpu": "4"}
    env = {e.name: e.value for e in container.env}
    assert env["TPU_NAME"] == "local" and "TF_CONFIG" not in env
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in [
        {"key": t.key, "operator": t.operator, "effect": t.effect} for t in pod.spec.tolerations
    ]
    trainings.wait_phase("tpu-gke", "Running")
    terminate_pod(trainings.core, trainings.namespace, "tpu-gke-worker-0", 0)
    trainings.wait_phase("tpu-gke", "Succeeded")
