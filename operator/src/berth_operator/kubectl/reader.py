"""The reads of `kubectl berth` (`Reader`): one training, its pods, events and Services."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from berth_operator import labels


class Reader:
    """The reads of `kubectl berth` about one training, as plain dicts (the API server's
    JSON: no client model objects)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, name: str):
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace, self.name = namespace, name

    def training(self) -> dict[str, Any]:
        """The BertTraining (ApiException 404 when it does not exist)."""
        return _json(
            self.custom.get_namespaced_custom_object(
                labels.GROUP, labels.VERSION, self.namespace, labels.PLURAL, self.name,
                _preload_content=False,
            )
        )  # fmt: skip

    def pods(self) -> list[dict[str, Any]]:
        """Every pod of the training: workers of every group, prepare and TensorBoard pods."""
        return list(
            _json(
                self.core.list_namespaced_pod(
                    self.namespace,
                    label_selector=f"{labels.TRAINING}={self.name}",
                    _preload_content=False,
                )
            )["items"]
        )

    def events(self) -> list[dict[str, Any]]:
        """The events about the training itself (the operator's)."""
        selector = f"involvedObject.name={self.name},involvedObject.kind={labels.KIND}"
        return list(
            _json(
                self.core.list_namespaced_event(
                    self.namespace, field_selector=selector, _preload_content=False
                )
            )["items"]
        )

    def tensorboard_services(self) -> list[dict[str, Any]]:
        """The training's TensorBoard Service, `<name>-tensorboard`, if it exists."""
        try:
            return [
                _json(
                    self.core.read_namespaced_service(
                        f"{self.name}-tensorboard", self.namespace, _preload_content=False
                    )
                )
            ]
        except ApiException as error:
            if error.status != 404:
                raise
            return []


def _json(response: Any) -> Any:
    return json.loads(response.data)
