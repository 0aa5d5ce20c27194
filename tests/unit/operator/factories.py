"""Small fluent factories of BertTraining bodies and worker pods for the pure-layer tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from berth_operator.builders import build_worker_pod
from berth_operator.workers import format_time

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


class Training(dict[str, Any]):
    """A BertTraining body; every `with_*` returns a modified copy."""

    def _copy(self) -> Training:
        return Training(copy.deepcopy(dict(self)))

    def with_spec(self, **fields: Any) -> Training:
        out = self._copy()
        out["spec"].update(fields)
        return out

    def with_run_policy(self, **fields: Any) -> Training:
        out = self._copy()
        out["spec"].setdefault("runPolicy", {}).update(fields)
        return out

    def with_gpu(self, count: int) -> Training:
        return self.with_spec(resources={"limits": {"nvidia.com/gpu": count}})

    def with_status(self, **fields: Any) -> Training:
        out = self._copy()
        out.setdefault("status", {}).update(fields)
        return out


def make_training(name: str = "bert", namespace: str = "ml", workers: int = 3) -> Training:
    return Training(
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "BertTraining",
            "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": 1},
            "spec": {
                "vocabulary": "gs://b/vocab.txt",
                "data": {"train": "gs://b/train/*.txt"},
                "output": {"dir": "gs://b/out"},
                "checkpoint": {"dir": "gs://b/ckpt"},
                "model": {"size": "tiny"},
                "training": {"globalBatchSize": 48, "sequenceLength": 64},
                "workers": workers,
            },
        }
    )


def make_pod(
    training: dict[str, Any],
    index: int,
    phase: str = "Running",
    *,
    ready: bool | None = None,
    restart: int = 0,
    created: datetime = T0,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    terminating: bool = False,
    pod_reason: str | None = None,
    unschedulable: bool = False,
    node: str | None = None,
    disruption: str | None = None,
) -> dict[str, Any]:
    """A worker pod as the API server would return it, in the given state (`node`: bound to
    it; `disruption`: the reason of a DisruptionTarget condition)."""
    pod = build_worker_pod(training, index, "img", restart)
    if node is not None:
        pod["spec"]["nodeName"] = node
    pod["metadata"]["creationTimestamp"] = format_time(created)
    if terminating:
        pod["metadata"]["deletionTimestamp"] = format_time(created + timedelta(seconds=1))
    ready = phase == "Running" if ready is None else ready
    status: dict[str, Any] = {
        "phase": phase,
        "podIP": f"127.20.0.{index + 1}",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if unschedulable:
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available",
            }
        )
    if disruption is not None:
        status["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": disruption}
        )
    if exit_code is not None:
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        }
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    if pod_reason:
        status["reason"], status["message"] = pod_reason, message
    pod["status"] = status
    return pod


def running_group(training: dict[str, Any], restart: int = 0) -> list[dict[str, Any]]:
    return [make_pod(training, i, restart=restart) for i in range(training["spec"]["workers"])]
