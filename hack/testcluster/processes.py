"""The components' processes: started in their own sessions, known by pid files under `pids/`
(with their argv, so a component can be started again as it was), stopped by process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .config import LOGS, PIDS, STATE

#: Components started by this invocation: their liveness comes from the child handle itself.
STARTED: dict[str, subprocess.Popen[bytes]] = {}


class Failure(Exception):
    """A component did not come up; the message ends with the last lines of its log. The
    command line stops the cluster when `up` fails this way."""


def start(name: str, argv: list[str]) -> None:
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    STARTED[name] = proc
    (PIDS / f"{name}.pid").write_text(str(proc.pid))
    (PIDS / f"{name}.argv").write_text(json.dumps(argv))


def start_again(name: str) -> bool:
    """Start `name` with the argv it was last started with; False when there is none."""
    argv_file = PIDS / f"{name}.argv"
    if not argv_file.exists():
        return False
    start(name, json.loads(argv_file.read_text()))
    return True


def pid_alive(name: str) -> bool:
    if name in STARTED:
        return STARTED[name].poll() is None
    pid_file = PIDS / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    # A zombie or a reused pid of another program does not count.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # cmdline reads empty for a moment after exec on some kernels: that is still our process.
    return stat.split(") ", 1)[1][0] != "Z" and (not cmdline or str(STATE).encode() in cmdline)


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, log: str | None = None
) -> None:
    """Poll `check` until it holds; raise Failure on timeout or when component `log` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if log and not pid_alive(log):
            raise failure(f"{log} exited while waiting for {what}", log)
        time.sleep(0.25)
    raise failure(f"timed out after {timeout:.0f}s waiting for {what}", log)


def failure(message: str, log: str | None = None) -> Failure:
    if log:
        path = LOGS / f"{log}.log"
        tail = path.read_text(errors="replace").splitlines()[-25:] if path.exists() else []
        message += f"\n--- last lines of {path}:\n" + "\n".join(tail)
    return Failure(message)


def stop(names: tuple[str, ...], grace: float = 15) -> None:
    """SIGTERM the components' process groups; SIGKILL what is left after `grace` seconds."""
    procs = []
    for name in names:
        if pid_alive(name):
            pid = int((PIDS / f"{name}.pid").read_text())
            procs.append((name, pid))
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, pid in procs:
        while time.monotonic() < deadline and still_running(name, pid):
            time.sleep(0.1)
        if still_running(name, pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if name in STARTED:  # our own child: reap it
            STARTED.pop(name).wait()


def still_running(name: str, pid: int) -> bool:
    if name in STARTED:
        return STARTED[name].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill(names: tuple[str, ...]) -> None:
    """SIGKILL the components' process groups at once (no SIGTERM: nothing shuts down in
    order) and wait until they are gone."""
    procs = [(name, int((PIDS / f"{name}.pid").read_text())) for name in names if pid_alive(name)]
    for _, pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for name, _ in procs:
        if name in STARTED:  # our own child: reap it
            STARTED.pop(name).wait()
    kill_processes([pid for _, pid in procs])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- /proc --------------------------------------------------------------------------------------


def processes() -> dict[int, bytes]:
    """Every process's command line, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
    return found


def children() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    found: dict[int, list[int]] = {}
    for pid in processes():
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
            found.setdefault(ppid, []).append(pid)
    return found


def kill_processes(pids: list[int]) -> None:
    """SIGKILL `pids` and wait (up to 5 s) until they are gone or zombies."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not zombie(p)]
        time.sleep(0.05)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except OSError:
        return True
