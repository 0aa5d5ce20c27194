"""Training progress from the trainer's Prometheus metrics (parse: pure; fetch: tiny I/O).

The trainer serves these gauges on port 9090 (`/metrics`):

    berth_train_step, berth_train_total_steps, berth_train_loss,
    berth_train_examples_per_second, berth_last_checkpoint_step

    >>> p = progress_from_metrics("berth_train_step 50\\nberth_train_total_steps 100\\n"
    ...                           "berth_train_examples_per_second 64\\n", global_batch_size=32)
    >>> p["etaSeconds"], p["summary"]
    (25, '50/100')
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from berth_operator.builders import METRICS_PORT

#: Prometheus metric → (status.progress field, integer?).
METRICS: dict[str, tuple[str, bool]] = {
    "berth_train_step": ("step", True),
    "berth_train_total_steps": ("totalSteps", True),
    "berth_train_loss": ("loss", False),
    "berth_train_examples_per_second": ("examplesPerSecond", False),
    "berth_last_checkpoint_step": ("lastCheckpointStep", True),
}


def progress_from_metrics(text: str, global_batch_size: int = 1) -> dict[str, Any]:
    """status.progress fields (without updatedAt) from a Prometheus text exposition.

    etaSeconds assumes the current examples/s holds: (totalSteps - step) * globalBatchSize / rate.
    """
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            target = METRICS.get(sample.name)
            if target is None or not math.isfinite(sample.value):
                continue
            field, integer = target
            out[field] = int(sample.value) if integer else round(float(sample.value), 6)
    ordered = {f: out[f] for f, _ in METRICS.values() if f in out}
    step, total, rate = out.get("step"), out.get("totalSteps"), out.get("examplesPerSecond")
    if step is not None and total:
        ordered["etaSeconds"] = _eta(step, total, rate, global_batch_size)
        ordered["summary"] = f"{step}/{total}"
    return {k: v for k, v in ordered.items() if v is not None}


def _eta(
    step: int, total: int, examples_per_second: float | None, global_batch_size: int
) -> int | None:
    if not examples_per_second or examples_per_second <= 0:
        return None
    return max(0, round((total - step) * global_batch_size / examples_per_second))


#: Info metric the trainer labels with who it is (berth_trainer.observability.identity).
IDENTITY_METRIC = "berth_trainer_info"


def identity_from_metrics(text: str) -> dict[str, str] | None:
    """The labels of `berth_trainer_info`, or None when the endpoint does not say who it is.

    >>> text = 'berth_trainer_info{namespace="ml",restart="0",training="b",worker="0"} 1.0\\n'
    >>> identity_from_metrics(text)
    {'namespace': 'ml', 'restart': '0', 'training': 'b', 'worker': '0'}
    """
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == IDENTITY_METRIC:
                return dict(sample.labels)
    return None


def progress_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether `new` differs from `old` ignoring updatedAt (skip no-op status writes)."""
    old = {k: v for k, v in (old or {}).items() if k != "updatedAt"}
    return bool(new) and old != dict(new)


def metrics_url(pod_ip: str, port: int = METRICS_PORT) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}/metrics"


def fetch_metrics(url: str, timeout: float = 2.0) -> str:
    """GET the metrics text; raises OSError (incl. URLError/timeouts) when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read(1 << 20)
    return body.decode("utf-8", errors="replace")
