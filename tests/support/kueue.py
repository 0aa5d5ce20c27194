"""Kueue objects for tests against the real Kueue that hack/cluster.py runs."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.waiting import wait_for

KUEUE, V = "kueue.x-k8s.io", "v1beta2"
QUEUE_LABEL = f"{KUEUE}/queue-name"
PRIORITY_LABEL = f"{KUEUE}/priority-class"
#: What ResourceFlavor `gpu` puts on the admitted workers: the KWOK GPU nodes' label, and a
#: toleration the scheduler does not need (it shows the flavor's tolerations reach the pods).
GPU_NODES = {"nvidia.com/gpu.present": "true"}
TOLERATION = {"key": "berth.dev/kueue-test", "operator": "Exists", "effect": "NoSchedule"}


class Kueue:
    """Kueue objects of one test: cluster-scoped ones are named after the namespace and
    deleted at the end."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.cluster_scoped: list[tuple[str, str]] = []

    def create_cluster(self, plural: str, body: dict[str, Any]) -> None:
        self.custom.create_cluster_custom_object(KUEUE, V, plural, body)
        self.cluster_scoped.append((plural, body["metadata"]["name"]))

    def queue(
        self,
        quota: int | str = 24,
        preemption: bool = False,
        resource: str = "nvidia.com/gpu",
        node_labels: dict[str, str] | None = None,
        tolerations: list[dict[str, str]] | None = None,
    ) -> str:
        """ResourceFlavor (on the KWOK GPU nodes unless `node_labels`/`tolerations` say
        otherwise), ClusterQueue of `quota` of `resource` for this namespace (lower priorities
        preempted when `preemption`), LocalQueue `team`."""
        flavor, cluster_queue = f"gpu-{self.namespace}", f"cq-{self.namespace}"
        self.create_cluster(
            "resourceflavors",
            {
                "apiVersion": f"{KUEUE}/{V}",
                "kind": "ResourceFlavor",
                "metadata": {"name": flavor},
                "spec": {
                    "nodeLabels": GPU_NODES if node_labels is None else node_labels,
                    "tolerations": [TOLERATION] if tolerations is None else tolerations,
                },
            },
        )
        spec: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
            "resourceGroups": [
                {
                    "coveredResources": [resource],
                    "flavors": [
                        {
                            "name": flavor,
                            "resources": [{"name": resource, "nominalQuota": quota}],
                        }
                    ],
                }
            ],
        }
        if preemption:
            spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
        self.create_cluster(
            "clusterqueues",
            {
                "apiVersion": f"{KUEUE}/{V}",
                "kind": "ClusterQueue",
                "metadata": {"name": cluster_queue},
                "spec": spec,
            },
        )
        self.custom.create_namespaced_custom_object(
            KUEUE,
            V,
            self.namespace,
            "localqueues",
            {
                "apiVersion": f"{KUEUE}/{V}",
                "kind": "LocalQueue",
                "metadata": {"name": "team"},
                "spec": {"clusterQueue": cluster_queue},
            },
        )
        wait_for(
            lambda: any(
                c["type"] == "Active" and c["status"] == "True"
                for c in self.custom.get_cluster_custom_object(
                    KUEUE, V, "clusterqueues", cluster_queue
                )
                .get("status", {})
                .get("conditions", [])
            ),
            what=f"ClusterQueue {cluster_queue} active",
        )
        return "team"

    def priority(self, name: str, value: int) -> str:
        full = f"{name}-{self.namespace}"
        self.create_cluster(
            "workloadpriorityclasses",
            {
                "apiVersion": f"{KUEUE}/{V}",
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": full},
                "value": value,
            },
        )
        return full

    def workloads(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
            KUEUE, V, self.namespace, "workloads"
        )["items"]
        return items

    def workload_of(self, training: str) -> dict[str, Any]:
        (found,) = [
            w
            for w in self.workloads()
            if w["metadata"].get("labels", {}).get("berth.dev/training") == training
        ]
        return found

    def cleanup(self) -> None:
        for plural, name in reversed(self.cluster_scoped):
            try:
                self.custom.delete_cluster_custom_object(KUEUE, V, plural, name)
            except ApiException as error:
                if error.status != 404:
                    raise
