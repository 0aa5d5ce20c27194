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
    """Whether merge-patching `new` over `old` changes anything but updatedAt (skip no-op
    status writes). Fields of `old` that `new` lacks stay as they are (a training keeps its
    preparation's byte counts), so they do not count."""
    old = old or {}
    return bool(new) and any(old.get(k) != v for k, v in new.items() if k != "updatedAt")


#: The prepare worker's gauges (`berth-trainer prepare --metrics-port`): input bytes read so
#: far, and the size of its slice.
PREPARE_READ, PREPARE_TOTAL = "berth_prepare_input_bytes", "berth_prepare_input_total_bytes"


def prepare_bytes_from_metrics(text: str) -> tuple[int, int] | None:
    """(bytes read, slice bytes) of one prepare worker, or None when it serves neither yet.

    >>> prepare_bytes_from_metrics("berth_prepare_input_bytes 42\\n"
    ...                            "berth_prepare_input_total_bytes 100\\n")
    (42, 100)
    """
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (PREPARE_READ, PREPARE_TOTAL) and math.isfinite(sample.value):
                found[sample.name] = int(sample.value)
    if PREPARE_TOTAL not in found:
        return None
    return found.get(PREPARE_READ, 0), found[PREPARE_TOTAL]


def prepare_progress(slices: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """status.progress while Preparing (without updatedAt): the (read, total) bytes of each
    prepare pod seen, summed. Pods not scraped yet count nothing, so the share only grows.

    >>> prepare_progress({"b-prepare-0-x": (30, 100), "b-prepare-1-y": (12, 0)})
    {'preparedBytes': 42, 'inputBytes': 100, 'summary': 'prepare 42%'}
    >>> prepare_progress({})
    {}
    """
    if not slices:
        return {}
    read = sum(min(done, total) if total else done for done, total in slices.values())
    total = sum(total for _, total in slices.values())
    share = f"{100 * read // total}%" if total else "-"
    return {"preparedBytes": read, "inputBytes": total, "summary": f"prepare {share}"}


def metrics_url(pod_ip: str, port: int = METRICS_PORT) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}/metrics"


def fetch_metrics(url: str, timeout: float = 2.0) -> str:
    """GET the metrics text; raises OSError (incl. URLError/timeouts) when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read(1 << 20)
    return body.decode("utf-8", errors="replace")
