"""The real node's names and addresses, and where its state lives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NODE_NAME = "berth-node-0"
BRIDGE = "berth0"
BRIDGE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
LABEL = "berth.dev/real-node"
#: The real node's processes, in start order (kubelet last: the pause image must be there).
NODE_COMPONENTS = ("containerd", "coredns", "kube-proxy", "kube-network-policies", "kubelet")
#: What dies with the node (`kill-node`): all but CoreDNS, which serves the cluster's DNS on the
#: bridge address (in a real cluster, replicas on other nodes).
NODE_PROCESSES = ("containerd", "kube-proxy", "kube-network-policies", "kubelet")
#: Pods for the real node: `nodeSelector: {LABEL: "true"}` and this toleration.
TOLERATION = {"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}


class Node:
    """Paths of one real node's state under `<state>/node`."""

    def __init__(self, state: Path):
        self.state = state
        self.dir = state / "node"
        self.containerd = self.dir / "containerd"
        self.socket = self.containerd / "containerd.sock"
        self.cni_bin, self.cni_conf = self.dir / "cni" / "bin", self.dir / "cni" / "net.d"
        self.ipam = self.dir / "cni" / "ipam"
        self.kubelet = self.dir / "kubelet"
        self.pod_logs = self.dir / "pod-logs"
        self.sysctls = state / "sysctls.json"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
