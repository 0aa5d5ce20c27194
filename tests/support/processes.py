"""Stopping a process a test started."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace` seconds; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
