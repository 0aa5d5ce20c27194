"""The operator's own Prometheus metrics (served on --metrics-port)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from berth_operator.api import Phase

TRAININGS = Gauge("berth_operator_trainings", "BertTrainings by phase.", ["phase"])
PODS_CREATED = Counter("berth_operator_pods_created_total", "Worker pods created.")
PODS_DELETED = Counter("berth_operator_pods_deleted_total", "Worker pods deleted.")
RESTARTS = Counter(
    "berth_operator_group_restarts_total",
    "Worker group restarts, by cause: failure (runPolicy.backoffLimit) or disruption.",
    ["cause"],
)
FINISHED = Counter("berth_operator_trainings_finished_total", "Trainings finished.", ["phase"])
RECONCILE_SECONDS = Histogram("berth_operator_reconcile_seconds", "Reconcile pass latency.")
LEADER = Gauge(
    "berth_operator_leader",
    "1 while this process acts: holds the leader election Lease, or runs without election.",
)
SCRAPE_FAILURES = Counter(
    "berth_operator_progress_scrape_failures_total",
    "Failed scrapes of a worker's metrics endpoint.",
)


class PhaseTracker:
    """Phase of every known training, behind the trainings-by-phase gauge."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
            counts = dict.fromkeys((p.value for p in Phase), 0)
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            TRAININGS.labels(phase=value).set(count)


def serve(port: int) -> None:
    """Serve /metrics on `port` (0: do nothing)."""
    if port:
        start_http_server(port)
