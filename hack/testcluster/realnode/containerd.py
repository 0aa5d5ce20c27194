"""The real node's containerd: `ctr` on its own socket, and its shims and the containers'
processes, found in /proc."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from ..config import PIDS
from ..processes import children, kill_processes, pid_alive, processes, start_again
from .host import delete_netns
from .node import Node


def ctr(node: Node, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", str(node.socket), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=check,
    )


def kill_containers(node: Node) -> None:
    """With containerd still up: SIGKILL every task, delete tasks and containers, and drop
    the pods' network namespaces (which takes their veths with them)."""
    ids = ctr(node, "containers", "ls", "-q", check=False).stdout.split()
    netns = set()
    for cid in ids:
        info = ctr(node, "containers", "info", cid, check=False)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            spec = json.loads(info.stdout)["Spec"]
            for ns in spec["linux"]["namespaces"]:
                if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run"):
                    netns.add(ns["path"])
        ctr(node, "tasks", "kill", "-s", "SIGKILL", cid, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = ctr(node, "tasks", "ls", check=False).stdout.splitlines()[1:]
        if all(" RUNNING" not in r for r in rows):
            break
        time.sleep(0.2)
    for cid in ids:
        ctr(node, "tasks", "delete", "-f", cid, check=False)
        ctr(node, "containers", "delete", cid, check=False)
    for path in netns:
        delete_netns(Path(path))


def kill_shims(node: Node) -> None:
    """SIGKILL this containerd's shims and their children (after a crash)."""
    kill_with_sockets(container_processes(node))


def kill_with_sockets(pids: list[int]) -> None:
    """SIGKILL shims and containers' processes `pids`, and remove the shims' sockets (a killed
    shim leaves its own behind)."""
    sockets = [shim_socket(pid) for pid in pids]
    kill_processes(pids)
    for socket in sockets:
        if socket:
            socket.unlink(missing_ok=True)


def container_processes(node: Node) -> list[int]:
    """Shims of this containerd and every process below them (the containers')."""
    shims = [
        pid
        for pid, cmd in processes().items()
        if b"containerd-shim" in cmd and str(node.socket).encode() in cmd
    ]
    below = children()
    found: dict[int, None] = {}  # ordered, once each
    todo = list(shims)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = None
            todo.extend(below.get(pid, []))
    return list(found)


def shim_socket(pid: int) -> Path | None:
    """The socket of a containerd shim (containerd 1.6: /run/containerd/s/<sha256 of address,
    namespace and id>), from its command line; None for another process."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    if "containerd-shim" not in args[0] or not {"-namespace", "-id", "-address"} <= set(flags):
        return None
    key = os.path.join(flags["-address"], flags["-namespace"], flags["-id"])
    return Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest()


def restart_containerd(node: Node) -> None:
    """Start the crashed node's containerd again, as before, for up to 10 s until it answers."""
    if not (PIDS / "containerd.argv").exists():
        return
    kill_shims(node)  # it must not reconnect to them
    start_again("containerd")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive("containerd"):
        if ctr(node, "version", check=False).returncode == 0:
            return
        time.sleep(0.2)


def freeze_containers(node: Node) -> list[int]:
    """SIGSTOP the shims and the containers' processes until no new one appears (a stopped
    process forks no more); return them all, for a SIGKILL that none escapes."""
    frozen: list[int] = []
    while found := [pid for pid in container_processes(node) if pid not in frozen]:
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen += found
    return frozen
