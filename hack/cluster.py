#!/usr/bin/env python3
"""A real Kubernetes control plane for Berth's tests: `up`, `down`, `status`, `leftovers`,
`restart-apiserver`, and `kill-node` / `start-node` for the real node.

The code is the package hack/testcluster/ (a module per component; its docstring says which).
This file is the command line and, for scripts that load it by path (bench/), the package's
public functions:

    python3 hack/cluster.py up [--kwok-only]   # prints how to use .cluster/kubeconfig
    python3 hack/cluster.py down               # also after a crash: from pid files and /proc
    python3 hack/cluster.py leftovers          # exit 1 if a real node left anything behind
    python3 hack/cluster.py restart-apiserver  # same port, same etcd: watches must reconnect
    python3 hack/cluster.py kill-node          # the real node loses power (API objects stay)
    python3 hack/cluster.py start-node         # ...and boots again: Ready, pods run

Everything lives under `.cluster/` (or BERTH_CLUSTER_DIR). `--kwok-only` (or BERTH_KWOK_ONLY=1)
leaves out the real node, which needs root and hack/install-node-deps.sh's packages. Only the
standard library is used, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

# hack/testcluster, beside this file (also when this file is loaded by path, as bench/ does).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from testcluster.cli import main
from testcluster.config import binaries
from testcluster.health import running
from testcluster.lifecycle import stop_all, up
from testcluster.realnode.power import kill_node, start_node

__all__ = ["binaries", "kill_node", "main", "running", "start_node", "stop_all", "up"]

if __name__ == "__main__":
    main()
