"""The only module that talks to the API server (besides kopf itself).

Objects go in and come out as plain camelCase dicts, like the builders make them. Creating an
object that already exists (409) and deleting one that is gone (404) both count as success, so
a retried or restarted pass never duplicates or fails on its own earlier work.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from berth_operator import labels


def load_config() -> None:
    """In-cluster service account if there is one, else the kubeconfig ($KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def _json(response: Any) -> Any:
    return json.loads(response.data)


class Cluster:
    """Typed wrappers over the few API calls the operator makes."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def get_training(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                _json(
                    self.custom.get_namespaced_custom_object(
                        labels.GROUP,
                        labels.VERSION,
                        namespace,
                        labels.PLURAL,
                        name,
                        _preload_content=False,
                    )
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete_training(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                labels.GROUP,
                labels.VERSION,
                namespace,
                labels.PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def list_worker_pods(self, namespace: str, training: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=labels.worker_selector(training), _preload_content=False
        )
        return list(_json(response)["items"])

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                _json(self.core.read_namespaced_pod(name, namespace, _preload_content=False))
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create a Pod, Service or ConfigMap; False if it already existed."""
        namespace, kind = obj["metadata"]["namespace"], obj["kind"]
        body: Any = dict(obj)  # the client serialises plain dicts as they are
        try:
            if kind == "Pod":
                self.core.create_namespaced_pod(namespace, body)
            elif kind == "Service":
                self.core.create_namespaced_service(namespace, body)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(namespace, body)
            else:
                raise ValueError(f"cannot create a {kind}")
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def sync_config_map(self, obj: Mapping[str, Any]) -> None:
        """Create the ConfigMap, or bring an existing one's data up to date."""
        if not self.create(obj):
            self.core.patch_namespaced_config_map(
                obj["metadata"]["name"], obj["metadata"]["namespace"], {"data": obj["data"]}
            )

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False if it was already gone."""
        try:
            self.core.delete_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded (only for spec.tpu.credentialsSecret; needs secrets get)."""
        try:
            secret = _json(
                self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
