"""hack/cluster.py's command line."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time

from . import controlplane, lifecycle
from .config import STATE, read_state
from .health import real_node_killed, running
from .processes import Failure
from .realnode import power
from .realnode.node import NODE_NAME, Node
from .realnode.teardown import leftovers

USAGE = """\
    python3 hack/cluster.py up [--kwok-only]   # prints how to use .cluster/kubeconfig
    python3 hack/cluster.py down               # also after a crash: from pid files and /proc
    python3 hack/cluster.py status             # exit 1 unless the control plane runs
    python3 hack/cluster.py leftovers          # exit 1 if a real node left anything behind
    python3 hack/cluster.py restart-apiserver  # same port, same etcd: watches must reconnect
    python3 hack/cluster.py kill-node          # the real node loses power (API objects stay)
    python3 hack/cluster.py start-node         # ...and boots again: Ready, pods run
"""
#: `status` of a cluster whose real node is down: the control plane still counts as running.
KILLED = f" ({NODE_NAME} killed: `hack/cluster.py start-node` boots it)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A real Kubernetes control plane for Berth's tests (hack/testcluster/).",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=[
            "up",
            "down",
            "status",
            "leftovers",
            "restart-apiserver",
            "kill-node",
            "start-node",
        ],
    )
    parser.add_argument(
        "--kwok-only",
        action="store_true",
        default=os.environ.get("BERTH_KWOK_ONLY") == "1",
        help="up: no real node, no root needed (also BERTH_KWOK_ONLY=1, e.g. for pytest)",
    )
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    # One command at a time: concurrent test sessions share the cluster instead of racing.
    lock = open(STATE / "lock", "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        run(args.command, args.kwok_only)
    except Failure as failure:
        if args.command in ("up", "restart-apiserver"):  # as it failed, so it goes
            lifecycle.stop_all()
        sys.exit(f"error: {failure}")


def run(command: str, kwok_only: bool) -> None:
    t0 = time.monotonic()
    if command == "up":
        lifecycle.up(kwok_only)
    elif command == "restart-apiserver":
        controlplane.restart_apiserver()
    elif command == "down":
        lifecycle.stop_all()
        print(f"control plane stopped in {time.monotonic() - t0:.1f}s")
    elif command == "kill-node":
        power.kill_node()
        print(f"{NODE_NAME} killed in {time.monotonic() - t0:.1f}s (API objects untouched)")
    elif command == "start-node":
        power.start_node()
        print(f"{NODE_NAME} Ready in {time.monotonic() - t0:.1f}s")
    elif command == "leftovers":
        found = leftovers(Node(STATE)) if os.geteuid() == 0 else []
        print("\n".join(found) if found else "nothing left behind")
        sys.exit(1 if found else 0)
    else:
        ok = running()
        killed = ok and real_node_killed(read_state())
        print(("running" if ok else "not running") + (KILLED if killed else ""))
        sys.exit(0 if ok else 1)
