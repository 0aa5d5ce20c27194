"""The test bed itself: a real control plane with KWOK nodes behaves like Kubernetes."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kwok import terminate_pod
from tests.support.podsecurity import restricted_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=False)


def versions() -> dict[str, str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "hack" / "versions.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


def test_server_version_is_pinned(kubeconfig: str) -> None:
    out = kubectl("version", "-o", "json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["serverVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]
    assert info["clientVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]
    assert info["serverVersion"]["gitVersion"].startswith("v1.34.")


def test_kwok_nodes_ready_with_accelerators(api: client.ApiClient) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
    assert {"kwok-gpu-0", "kwok-gpu-1", "kwok-gpu-2", "kwok-tpu-0"} <= set(nodes)
    for node in nodes.values():
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", node.metadata.name
    assert nodes["kwok-gpu-0"].status.allocatable["nvidia.com/gpu"] == "8"
    tpu = nodes["kwok-tpu-0"]
    assert tpu.status.allocatable["google.com/tpu"] == "4"
    assert tpu.metadata.labels["cloud.google.com/gke-tpu-topology"] == "2x2"


def pod(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": restricted_pod(
            {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": "busybox:1.36"}],
                **spec,
            }
        ),
    }


def test_pod_runs_with_loopback_ip(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod("p"))
    running = wait_for(
        lambda: (p := core.read_namespaced_pod("p", namespace)).status.phase == "Running" and p,
        what="pod Running",
    )
    assert running.spec.node_name.startswith("kwok-gpu-")
    assert running.status.pod_ip.startswith("127.20.")
    assert all(c.ready for c in running.status.container_statuses)


def test_test_namespaces_enforce_pod_security_restricted(
    api: client.ApiClient, namespace: str
) -> None:
    """Every namespace of the suite enforces Pod Security `restricted`, so every training the
    suite runs proves its workers satisfy it: a root pod is refused there."""
    root = pod("root")
    root["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(api).create_namespaced_pod(namespace, root)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message, message
    assert "runAsUser=0" in message, message


@pytest.mark.parametrize(
    ("exit_code", "phase", "reason"),
    [(137, "Failed", "OOMKilled"), (2, "Failed", "Error"), (0, "Succeeded", "Completed")],
)
def test_pod_exit_code(
    api: client.ApiClient, namespace: str, exit_code: int, phase: str, reason: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod("p"))
    wait_for(
        lambda: core.read_namespaced_pod("p", namespace).status.phase == "Running",
        what="pod Running",
    )
    terminate_pod(
        core,
        namespace,
        "p",
        exit_code,
        message=f"bye {exit_code}",
        reason="OOMKilled" if exit_code == 137 else None,
    )
    done = wait_for(
        lambda: (p := core.read_namespaced_pod("p", namespace)).status.phase == phase and p,
        what=f"pod {phase}",
    )
    terminated = done.status.container_statuses[0].state.terminated
    assert terminated.exit_code == exit_code
    assert terminated.reason == reason
    assert terminated.message == f"bye {exit_code}"


def test_unschedulable_pod_stays_pending(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    big = pod("p")
    big["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "9"}}
    core.create_namespaced_pod(namespace, big)
    scheduled = wait_for(
        lambda: next(
            (
                c
                for c in core.read_namespaced_pod("p", namespace).status.conditions or []
                if c.type == "PodScheduled"
            ),
            None,
        ),
        what="PodScheduled condition",
    )
    assert scheduled.status == "False" and scheduled.reason == "Unschedulable"


def test_tpu_pod_lands_on_tpu_node(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    tpu = pod(
        "p",
        nodeSelector={
            "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
            "cloud.google.com/gke-tpu-topology": "2x2",
        },
        tolerations=[{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    tpu["spec"]["containers"][0]["resources"] = {
        "requests": {"google.com/tpu": "4"},
        "limits": {"google.com/tpu": "4"},
    }
    core.create_namespaced_pod(namespace, tpu)
    running = wait_for(
        lambda: (p := core.read_namespaced_pod("p", namespace)).status.phase == "Running" and p,
        what="TPU pod Running",
    )
    assert running.spec.node_name == "kwok-tpu-0"


def test_garbage_collection_deletes_dependents(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    for i in range(2):
        dependent = pod(f"dep-{i}")
        dependent["metadata"]["ownerReferences"] = [ref]
        core.create_namespaced_pod(namespace, dependent)
    assert len(core.list_namespaced_pod(namespace).items) == 2
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    wait_for(
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout=60,
        what="dependent pods deleted by the garbage collector",
    )


def test_cel_rule_rejects_with_its_message(api: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    group = f"t{uuid.uuid4().hex[:8]}.berth.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.min <= self.max",
                                            "message": "min must not exceed max",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(f"widgets.{group}").status.conditions
                or []
            ),
            what="CRD Established",
        )
        objects = client.CustomObjectsApi(api)

        def create(lo: int, hi: int) -> object:
            body = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{lo}{hi}"},
                "spec": {"min": lo, "max": hi},
            }
            return objects.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)

        # The CRD may be Established a moment before its endpoint serves.
        wait_for(lambda: create(1, 2), what="a valid Widget accepted")
        with pytest.raises(ApiException) as rejected:
            create(3, 2)
        assert rejected.value.status == 422
        assert "min must not exceed max" in rejected.value.body
    finally:
        ext.delete_custom_resource_definition(f"widgets.{group}")


def test_helm_version_is_pinned(kubeconfig: str) -> None:
    out = subprocess.run(
        ["helm", "version", "--template", "{{ .Version }}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == versions()["HELM_VERSION"]
