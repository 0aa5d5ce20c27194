"""Trainer failures that carry an exit code, and the termination log the operator reads.

Imports nothing heavy: `cli` raises and reports these before TensorFlow is loaded.

    >>> err = TrainerError(ExitCode.DATA_INVALID, "data.train: no file matches 'x/*.txt'")
    >>> int(err.code), str(err)
    (3, "data.train: no file matches 'x/*.txt'")
"""

from __future__ import annotations

import os

from berth_trainer.exit_codes import ExitCode

#: Where Kubernetes reads a container's termination message by default.
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
#: Kubernetes shows at most 4096 bytes of the termination message.
TERMINATION_LOG_LIMIT = 4096


class TrainerError(Exception):
    """A failure with a documented exit code; the message says what to fix."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def termination_log_path(path: str | None = None) -> str:
    """The termination log: `path`, else $BERTH_TERMINATION_LOG, else the default."""
    return path or os.environ.get("BERTH_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG


def write_termination_log(message: str, path: str | None = None) -> None:
    """Write `message` to the termination log (`termination_log_path(path)`): why the process
    failed, or the chief's final figures when it succeeded (`observability.final_figures`).

    A log that cannot be written (not in a pod, read-only) is ignored: the message also goes to
    stderr (a failure) or to metrics.json (the final figures).
    """
    path = termination_log_path(path)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(message.encode("utf-8")[:TERMINATION_LOG_LIMIT].decode("utf-8", "ignore"))
    except OSError:
        pass
