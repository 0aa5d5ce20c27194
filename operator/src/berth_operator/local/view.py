"""What `berth run` shows: the `kubectl get bt` fields, live on a terminal, else as lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

COLUMNS = ("Phase", "Workers", "Step", "%", "Loss", "Examples/s", "Metric", "ETA", "Restarts")


def row(status: Mapping[str, Any], workers: int) -> tuple[str, ...]:
    """The printer-column values of a status.

    >>> row({"phase": "Running", "workers": {"summary": "2/2"}, "restarts": 1,
    ...      "progress": {"step": 5, "summary": "5/10", "percent": 50, "loss": 2.5,
    ...                   "examplesPerSecond": 31.25, "etaSeconds": 75},
    ...      "validation": {"step": 0, "summary": "acc 0.250"}}, 2)
    ('Running', '2/2', '5/10', '50', '2.5', '31.2', 'acc 0.250', '1m15s', '1')

    While Preparing, the Step column shows how many data.prepare slices are done:

    >>> row({"phase": "Preparing", "prepare": {"summary": "1/4"}}, 2)[:4]
    ('Preparing', '0/2', 'prepare 1/4', '-')
    """
    progress = status.get("progress") or {}
    if status.get("phase") == "Preparing" and not progress.get("summary"):
        progress = {"summary": f"prepare {(status.get('prepare') or {}).get('summary') or '-'}"}
    started = bool(progress.get("step"))  # the trainer publishes zeros before its first step
    loss = progress.get("loss") if started else None
    rate = progress.get("examplesPerSecond") if started else None
    eta = progress.get("etaSeconds")
    share = progress.get("percent")
    return (
        str(status.get("phase") or "Pending"),
        str((status.get("workers") or {}).get("summary") or f"0/{workers}"),
        str(progress.get("summary") or "-"),
        str(share) if share is not None else "-",
        f"{loss:.4g}" if loss is not None else "-",
        f"{rate:.1f}" if rate is not None else "-",
        str((status.get("validation") or {}).get("summary") or "-"),
        f"{eta // 60}m{eta % 60:02d}s" if eta is not None else "-",
        str(status.get("restarts") or 0),
    )


class View:
    """A live table on a terminal; one line per change otherwise (logs, CI, pipes)."""

    def __init__(self, name: str, workers: int, console: Console | None = None) -> None:
        self.name, self.workers = name, workers
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self.last: tuple[str, ...] | None = None
        self.events_shown = 0

    def __enter__(self) -> View:
        if self.console.is_terminal:
            self.live = Live(self._table(None), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, status: Mapping[str, Any], events: list[str]) -> None:
        for event in events[self.events_shown :]:
            self.console.print(f"[dim]event[/dim] {event}", highlight=False, soft_wrap=True)
        self.events_shown = len(events)
        current = row(status, self.workers)
        if self.live is not None:
            self.live.update(self._table(current))
        elif current != self.last:
            text = "  ".join(f"{c}={v}" for c, v in zip(COLUMNS, current, strict=True))
            self.console.print(
                f"{self.name}: {text}", markup=False, highlight=False, soft_wrap=True
            )
        self.last = current

    def _table(self, values: tuple[str, ...] | None) -> Table:
        table = Table(title=f"berth run: {self.name}", title_justify="left")
        for column in ("Name", *COLUMNS):
            table.add_column(column)
        table.add_row(self.name, *(values or row({}, self.workers)))
        return table
