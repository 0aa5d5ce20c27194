"""KWOK: the four fake nodes (hack/kwok/nodes.yaml) and our pod stages (hack/kwok/stages/)."""

from __future__ import annotations

from pathlib import Path

from .config import HACK, STATE
from .health import kubectl
from .processes import start

#: Pod IPs are loopback addresses, so a test can serve a pod's metrics on its IP.
POD_CIDR = "127.20.0.0/16"


def start_kwok(kwok: Path, ports: dict[str, int]) -> None:
    config = STATE / "kwok.yaml"
    config.write_text(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n"
        f"  cidr: {POD_CIDR}\n  nodeIP: 127.19.0.1\n  nodeLeaseDurationSeconds: 40\n"
        "  nodeLeaseParallelism: 4\n  podPlayStageParallelism: 4\n"
        "  nodePlayStageParallelism: 4\n  podsOnNodeSyncParallelism: 2\n"
        "---\n"
        + "---\n".join(p.read_text() for p in sorted((HACK / "kwok" / "stages").glob("*.yaml")))
    )
    start(
        "kwok",
        [
            str(kwok),
            f"--kubeconfig={STATE / 'kwok.kubeconfig'}",
            f"--config={config}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
    )


def create_nodes() -> None:
    kubectl("apply", "--server-side", "-f", str(HACK / "kwok" / "nodes.yaml"))
