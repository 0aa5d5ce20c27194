"""What a running trainer reports: Prometheus gauges, TensorBoard scalars, JSON log lines and,
on a terminal only, a rich progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from berth_trainer.errors import TERMINATION_LOG_LIMIT
from berth_trainer.headline import headline_metric

if TYPE_CHECKING:  # tpu imports TensorFlow; this module must not
    from berth_trainer.tpu import GuestAttributes

log = logging.getLogger("berth_trainer")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and any `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(worker: int | None = None) -> None:
    """Send the `berth_trainer` logger's JSON lines to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def identity(namespace: str, training: str, restart: int | str, worker: int) -> dict[str, str]:
    """Labels of `berth_trainer_info`: which worker of which group restart of which training.

    The operator compares a scraped endpoint's labels with these before it uses its numbers.
    """
    return {
        "namespace": namespace,
        "training": training,
        "restart": str(restart),
        "worker": str(worker),
    }


def worker_identity(env: Mapping[str, str], worker: int) -> dict[str, str]:
    """This process's `identity`, from the pod's environment (the operator sets it).

    >>> worker_identity({"BERTH_NAMESPACE": "ml", "BERTH_TRAINING": "bert",
    ...                  "BERTH_RESTART": "2"}, 1)
    {'namespace': 'ml', 'training': 'bert', 'restart': '2', 'worker': '1'}
    """
    return identity(
        env.get("BERTH_NAMESPACE", ""),
        env.get("BERTH_TRAINING", ""),
        env.get("BERTH_RESTART", ""),
        worker,
    )


def _significant(value: float, digits: int = 6) -> float:
    """`value` rounded to `digits` significant digits (a short, exact-enough JSON number).

    >>> _significant(0.123456789), _significant(12345678.9)
    (0.123457, 12345700.0)
    """
    return float(f"{value:.{digits}g}")


def final_figures(
    step: int,
    total_steps: int,
    loss: float | None,
    validation: Mapping[str, float] | None = None,
    validation_step: int | None = None,
    task: str | None = None,
    limit: int = TERMINATION_LOG_LIMIT,
) -> str:
    """The chief's success termination message: one compact JSON object of at most `limit`
    UTF-8 bytes, from which the operator writes the final status.progress and
    status.validation (`berth_operator.progress.final_figures`):

    {"step": S, "totalSteps": T, "loss": L, "validation": {"step": S, "metrics": {name: v}}}

    Numbers keep 6 significant digits; what is absent or not finite is left out. Should the
    metrics not fit (many per-class ones), `task`'s headline metric and `loss` stay and the
    others are dropped, longest name first.

    >>> final_figures(100, 100, 1.23456789, {"validation_accuracy": 0.5, "validation_loss": 2.0},
    ...               100, task="pretraining")
    '{"step":100,"totalSteps":100,"loss":1.23457,"validation":{"step":100,"metrics":{"accuracy":0.5,"loss":2.0}}}'
    >>> final_figures(7, 10, float("nan"))
    '{"step":7,"totalSteps":10}'
    """
    figures: dict[str, Any] = {"step": int(step), "totalSteps": int(total_steps)}
    if loss is not None and math.isfinite(loss):
        figures["loss"] = _significant(loss)
    metrics = {
        k.removeprefix("validation_"): _significant(float(v))
        for k, v in (validation or {}).items()
        if math.isfinite(float(v))
    }
    if metrics:
        figures["validation"] = {"step": int(step if validation_step is None else validation_step)}
        figures["validation"]["metrics"] = dict(sorted(metrics.items()))

    def encoded() -> str:
        return json.dumps(figures, separators=(",", ":"), allow_nan=False)

    keep = {headline_metric(task) if task else None, "loss"}
    droppable = sorted((k for k in metrics if k not in keep), key=lambda k: (len(k), k))
    while len(encoded().encode("utf-8")) > limit and droppable:
        del figures["validation"]["metrics"][droppable.pop()]
    text = encoded()
    if len(text.encode("utf-8")) > limit:  # only names no metric should have are left
        figures.pop("validation", None)
        text = encoded()
    return text


class Reporter:
    """Gauges on `metrics_port` (0 = off), TensorBoard under `tb_dir` (None = off), log lines."""

    def __init__(
        self,
        total_steps: int,
        metrics_port: int,
        tb_dir: str | None,
        worker: int,
        guest: GuestAttributes | None = None,
    ) -> None:
        self.worker = worker
        #: On a Cloud TPU VM: progress for the operator, which cannot scrape the VM.
        self.guest = guest
        self._last_checkpoint: int | None = None
        self.total_steps = total_steps
        self._gauges: dict[str, Any] = {}
        self._validation: Any = None
        if metrics_port:
            self._start_metrics(metrics_port)
        self._writer = None
        if tb_dir:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(tb_dir)
        self._progress = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self._progress = Progress(transient=True)
            self._task = self._progress.add_task("training", total=total_steps)
            self._progress.start()
        self._last_time = time.monotonic()
        self._examples = self._tokens = 0.0

    def _start_metrics(self, port: int) -> None:
        import prometheus_client as prom

        registry = prom.CollectorRegistry()
        for name, doc in (
            ("berth_train_step", "Optimizer steps done."),
            ("berth_train_total_steps", "Optimizer steps configured."),
            ("berth_train_loss", "Training loss of the last logged step."),
            ("berth_train_examples_per_second", "Global examples per second (all workers)."),
            (
                "berth_train_tokens_per_second",
                "Global non-padding (useful) tokens per second (all workers).",
            ),
            (
                "berth_train_non_padding_fraction",
                "Share of the last step's token positions that are not padding.",
            ),
            ("berth_last_checkpoint_step", "Step of the last checkpoint saved."),
            ("berth_validation_step", "Step the latest validation metrics were taken at."),
        ):
            self._gauges[name] = prom.Gauge(name, doc, registry=registry)
        self._validation = prom.Gauge(
            "berth_validation",
            "Latest validation metrics over data.validation, by metric name (chief only).",
            ["metric"],
            registry=registry,
        )
        self._gauges["berth_train_total_steps"].set(self.total_steps)
        info = prom.Info(
            "berth_trainer",
            "Which worker serves these metrics (the operator checks it before using them).",
            registry=registry,
        )
        info.info(worker_identity(os.environ, self.worker))
        try:
            prom.start_http_server(port, registry=registry)
        except OSError as err:  # several local workers on one port: the first one serves
            log.warning("metrics port %d unavailable: %s", port, err)

    def _set(self, name: str, value: float) -> None:
        if name in self._gauges:
            self._gauges[name].set(value)

    def start(self, step: int) -> None:
        self._last_time = time.monotonic()
        self._examples = self._tokens = 0.0
        self._set("berth_train_step", step)
        if self._progress:
            self._progress.update(self._task, completed=step)

    def step(
        self,
        step: int,
        metrics: dict[str, float],
        examples: int,
        log_now: bool,
        tokens: float = 0.0,
    ) -> None:
        """One call's progress: `examples` and non-padding `tokens` it processed (all workers)."""
        if self._progress:
            self._progress.update(self._task, completed=step)
        self._examples += examples
        self._tokens += tokens
        if not log_now:
            return
        now = time.monotonic()
        seconds = max(now - self._last_time, 1e-9)
        eps, tps = self._examples / seconds, self._tokens / seconds
        self._last_time = now
        self._examples = self._tokens = 0.0
        self._set("berth_train_step", step)
        self._set("berth_train_loss", metrics["loss"])
        self._set("berth_train_examples_per_second", eps)
        self._set("berth_train_tokens_per_second", tps)
        self._set("berth_train_non_padding_fraction", metrics.get("non_padding_fraction", 0.0))
        fields = {"step": step, "total_steps": self.total_steps, "worker": self.worker}
        fields.update({k: round(v, 6) for k, v in metrics.items()})
        fields["examples_per_second"] = round(eps, 2)
        fields["tokens_per_second"] = round(tps, 1)
        log.info("train step", extra={"fields": fields})
        if self.guest is not None:
            self.guest.report(step, metrics["loss"], eps, self._last_checkpoint)
        rates = {"examples_per_second": eps, "tokens_per_second": tps}
        self.scalars(step, {**metrics, **rates}, prefix="train/")

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if self._writer is None:
            return
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # What tf.summary.scalar writes, without needing the tensorboard package installed.
        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        with self._writer.as_default(step=step):
            for k, v in values.items():
                tf.summary.write(prefix + k, tf.constant(v, tf.float32), metadata=meta)
        self._writer.flush()

    def validation(self, step: int, metrics: Mapping[str, float]) -> None:
        """Publish validation `metrics` taken at `step` (names with or without the `validation_`
        prefix that `runner.evaluate` gives them): the gauges `berth_validation_step` and
        `berth_validation{metric="<name>"}`, which the operator copies to status.validation,
        and TensorBoard scalars `validation/<name>`."""
        values = {k.removeprefix("validation_"): float(v) for k, v in metrics.items()}
        if self._validation is not None:
            for name, value in values.items():
                self._validation.labels(metric=name).set(value)
        self._set("berth_validation_step", step)
        self.scalars(step, values, prefix="validation/")

    def checkpoint(self, step: int) -> None:
        self._last_checkpoint = step
        self._set("berth_last_checkpoint_step", step)

    def close(self) -> None:
        if self._progress:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()
