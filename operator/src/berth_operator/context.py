"""What every handler needs, handed over in kopf's `memo` (the pod path and the TPU path)."""

from __future__ import annotations

import dataclasses
from typing import Any

from berth_operator import metrics
from berth_operator.controller import Controller
from berth_operator.k8s import Cluster
from berth_operator.settings import Settings


@dataclasses.dataclass
class Context:
    settings: Settings
    cluster: Cluster
    phases: metrics.PhaseTracker
    #: The pod path's controller, made at start-up once kopf's indexes exist.
    controller: Controller | None = None
    #: Cloud TPU API clients by (endpoint, namespace, credentialsSecret, key id).
    tpu_clients: dict[tuple[str, ...], Any] = dataclasses.field(default_factory=dict)
    #: Cloud TPU credentials Secrets by (namespace, name): (loop time they expire, data).
    tpu_secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = dataclasses.field(
        default_factory=dict
    )


def from_memo(memo: Any) -> Context:
    ctx: Context = memo["context"]
    return ctx
