"""spec.tensorboard on the real control plane + KWOK: the operator, under the chart's RBAC, makes
the TensorBoard Deployment, Service and NetworkPolicy `<name>-tensorboard`, owned by the
training; disabling it deletes them, and deleting the training leaves them to the real garbage
collector (kube-controller-manager). That TensorBoard really serves the curves is the real
node's test (tests/integration/test_real_node_prepare.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.chartrbac import chart_rbac_kubeconfig
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

NAME = "tb"
CHILD = f"{NAME}-tensorboard"


def children(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The training's TensorBoard objects that exist (kind → object)."""
    reads = {
        "Deployment": client.AppsV1Api(api).read_namespaced_deployment,
        "Service": client.CoreV1Api(api).read_namespaced_service,
        "NetworkPolicy": client.NetworkingV1Api(api).read_namespaced_network_policy,
    }
    found = {}
    for kind, read in reads.items():
        try:
            found[kind] = read(CHILD, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
    return found


def test_tensorboard_objects_follow_the_field_and_the_training(
    api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    tmp_path: Path,
    operator_factory: Callable[..., Operator],
    trainings: Trainings,
) -> None:
    with chart_rbac_kubeconfig(api, kubeconfig, namespace, tmp_path / "sa.kubeconfig") as as_chart:
        operator_factory(kubeconfig=as_chart)
        owner = trainings.create(manifest(NAME, workers=1, tensorboard={"enabled": True}))
        uid = owner["metadata"]["uid"]
        made = wait_for(
            lambda: len(found := children(api, namespace)) == 3 and found,
            timeout=30,
            what=f"Deployment, Service and NetworkPolicy {CHILD}",
        )
        for kind, obj in made.items():
            (ref,) = obj.metadata.owner_references
            assert (ref.kind, ref.name, ref.uid, ref.controller) == (
                "BertTraining",
                NAME,
                uid,
                True,
            ), kind
            assert obj.metadata.labels["berth.dev/role"] == "tensorboard", kind
        container = made["Deployment"].spec.template.spec.containers[0]
        assert container.command[:3] == [
            "tensorboard",
            "--logdir",
            "gs://berth-test/out/tensorboard",
        ]
        assert made["Service"].spec.ports[0].port == 6006
        assert made["Service"].spec.ports[0].name == "http"
        assert {e.reason for e in trainings.events(NAME)} >= {"CreatedTensorBoard"}

        # Turned off on a running training: gone (deleted by the operator, as the chart allows).
        trainings.patch(NAME, {"spec": {"tensorboard": {"enabled": False}}})
        wait_for(lambda: not children(api, namespace), timeout=30, what=f"{CHILD} deleted")
        # ... and on again.
        trainings.patch(NAME, {"spec": {"tensorboard": {"enabled": True}}})
        wait_for(lambda: len(children(api, namespace)) == 3, timeout=30, what=f"{CHILD} again")

        # Deleted with the training: the garbage collector follows the ownerReferences.
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            "berth.dev", "v1alpha1", namespace, "berttrainings", NAME
        )
        wait_for(lambda: not children(api, namespace), timeout=60, what=f"{CHILD} collected")
