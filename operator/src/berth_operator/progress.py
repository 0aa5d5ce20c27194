"""Training progress from the trainer's Prometheus metrics (parse: pure; fetch: tiny I/O).

The trainer serves these gauges on port 9090 (`/metrics`):

    berth_train_step, berth_train_total_steps, berth_train_loss,
    berth_train_examples_per_second, berth_last_checkpoint_step

    >>> p = progress_from_metrics("berth_train_step 50\\nberth_train_total_steps 100\\n"
    ...                           "berth_train_examples_per_second 64\\n", global_batch_size=32)
    >>> p["etaSeconds"], p["summary"], p["percent"]
    (25, '50/100', 50)

and, from the chief, the latest validation metrics (before training and at its end):

    berth_validation_step, berth_validation{metric="<name>"}

On success the chief leaves its final figures in its termination message
(`berth_trainer.observability.final_figures`); `final_figures` here turns them into the final
status.progress and status.validation.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from berth_operator.builders import METRICS_PORT
from berth_trainer.headline import headline

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
        ordered["percent"] = percent(step, total)
        ordered["etaSeconds"] = _eta(step, total, rate, global_batch_size)
        ordered["summary"] = f"{step}/{total}"
    return {k: v for k, v in ordered.items() if v is not None}


def percent(step: int, total: int) -> int:
    """Share of `total` steps done, in whole percent, 0-100 (status.progress.percent).

    >>> percent(999, 1000), percent(1200, 1000), percent(-1, 1000)
    (99, 100, 0)
    """
    return max(0, min(100, 100 * step // total)) if total > 0 else 0


def _eta(
    step: int, total: int, examples_per_second: float | None, global_batch_size: int
) -> int | None:
    if not examples_per_second or examples_per_second <= 0:
        return None
    return max(0, round((total - step) * global_batch_size / examples_per_second))


#: The chief's validation gauges (berth_trainer.observability.Reporter.validation).
VALIDATION_STEP, VALIDATION = "berth_validation_step", "berth_validation"


def validation_status(
    step: int, metrics: Mapping[str, float], task: str | None
) -> dict[str, Any] | None:
    """status.validation (without updatedAt) of `metrics` taken at `step`: each finite metric
    as {name, value} sorted by name, and `task`'s headline as the summary; None without any.

    >>> v = validation_status(40, {"loss": 2.5, "accuracy": 0.25}, "pretraining")
    >>> v["step"], [m["name"] for m in v["metrics"]], v["summary"]
    (40, ['accuracy', 'loss'], 'acc 0.250')
    """
    kept = {
        str(k): round(float(v), 6)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    if not kept:
        return None
    out: dict[str, Any] = {
        "step": int(step),
        "metrics": [{"name": k, "value": v} for k, v in sorted(kept.items())],
    }
    summary = headline(task, kept) if task else None
    if summary:
        out["summary"] = summary
    return out


def validation_from_metrics(text: str, task: str | None) -> dict[str, Any] | None:
    """status.validation (without updatedAt) from the chief's Prometheus text, or None while it
    has published no validation metric (no data.validation, or before the first evaluation).

    >>> validation_from_metrics('berth_validation_step 0\\n'
    ...     'berth_validation{metric="f1"} 0.91234\\n', "tokenClassification")
    {'step': 0, 'metrics': [{'name': 'f1', 'value': 0.91234}], 'summary': 'f1 0.912'}
    """
    step, metrics = 0, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == VALIDATION_STEP and math.isfinite(sample.value):
                step = int(sample.value)
            elif sample.name == VALIDATION and "metric" in sample.labels:
                metrics[sample.labels["metric"]] = float(sample.value)
    return validation_status(step, metrics, task)


def validation_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether `new` status.validation says anything `old` does not (updatedAt aside).

    >>> validation_changed({"step": 0, "updatedAt": "t"}, {"step": 0})
    False
    """
    if not new:
        return False
    return {k: v for k, v in (old or {}).items() if k != "updatedAt"} != {
        k: v for k, v in new.items() if k != "updatedAt"
    }


def final_figures(message: str | None, task: str | None) -> dict[str, Any]:
    """The final {"progress": ..., "validation": ...} of a succeeded training from its chief's
    termination `message` (`berth_trainer.observability.final_figures`): step = totalSteps,
    percent 100, the final loss, etaSeconds 0, summary "T/T"; and the last validation metrics.
    Anything else (an older trainer image, a user image, a cut message) gives {}: the status
    keeps what the scrapes found.

    >>> final_figures('{"step":20,"totalSteps":20,"loss":1.5}', "pretraining")["progress"]
    {'step': 20, 'totalSteps': 20, 'loss': 1.5, 'percent': 100, 'etaSeconds': 0, 'summary': '20/20'}
    >>> final_figures("worker 0 completed", "pretraining")
    {}
    """
    try:
        figures = json.loads(message or "")
        total = figures["totalSteps"]
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            return {}
    except (ValueError, TypeError, KeyError):
        return {}
    progress: dict[str, Any] = {"step": total, "totalSteps": total}
    loss = figures.get("loss")
    if isinstance(loss, int | float) and not isinstance(loss, bool) and math.isfinite(loss):
        progress["loss"] = round(float(loss), 6)
    progress |= {"percent": 100, "etaSeconds": 0, "summary": f"{total}/{total}"}
    out: dict[str, Any] = {"progress": progress}
    validation = figures.get("validation")
    if isinstance(validation, dict) and isinstance(validation.get("metrics"), dict):
        step = validation.get("step")
        step = step if isinstance(step, int) and not isinstance(step, bool) else total
        if entry := validation_status(step, validation["metrics"], task):
            out["validation"] = entry
    return out


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
