"""Where the cluster lives, which binaries it runs, and its state.json."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
STATE = Path(os.environ.get("BERTH_CLUSTER_DIR", REPO / ".cluster"))
PKI, LOGS, PIDS = STATE / "pki", STATE / "logs", STATE / "pids"
KUBECONFIG = STATE / "kubeconfig"
STATE_FILE = STATE / "state.json"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kueue",
)
SERVICE_CIDR = "10.96.0.0/16"
KWOK_NODES = 4


def versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (HACK / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def kube_network_policies_version(v: dict[str, str]) -> str:
    """Its cache key, as hack/build-control-plane.sh makes it: the version and the patch's hash."""
    patch = (HACK / "kube-network-policies.patch").read_bytes()
    return f"{v['KUBE_NETWORK_POLICIES_VERSION']}-{hashlib.sha256(patch).hexdigest()[:12]}"


def cache_dir() -> Path:
    return Path(
        os.environ.get("BERTH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "berth"
    )


def binaries(node: bool = False) -> dict[str, Path]:
    v = versions()
    cache = cache_dir()
    k8s = v["KUBERNETES_VERSION"]
    wanted = {
        "etcd": v["ETCD_VERSION"],
        "kube-apiserver": k8s,
        "kube-controller-manager": k8s,
        "kube-scheduler": k8s,
        "kubectl": k8s,
        "kwok": v["KWOK_VERSION"],
        "helm": v["HELM_VERSION"],
        "kueue": v["KUEUE_VERSION"],
    }
    if node:
        wanted |= {"kubelet": k8s, "kube-proxy": k8s}
        wanted |= {"coredns": v["COREDNS_VERSION"], "pause": v["PAUSE_VERSION"]}
        wanted |= {"kube-network-policies": kube_network_policies_version(v)}
    found = {name: cache / "bin" / f"{name}-{ver}" for name, ver in wanted.items()}
    missing = [str(p) for p in found.values() if not os.access(p, os.X_OK)]
    if missing:
        sys.exit(
            "error: control-plane binaries missing (run `make control-plane`): "
            + ", ".join(missing)
        )
    return found


def read_state() -> dict[str, Any]:
    """state.json: ports, the apiserver's address and, with the real node, `real_node`."""
    state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    return state


def write_state(state: dict[str, Any]) -> None:
    STATE_FILE.write_text(json.dumps(state, indent=2))
