"""Drive KWOK from tests: make its fake pods exit (see hack/kwok/stages/30-pod-exit.yaml), give
a test nodes of its own, and run a KWOK process of its own whose nodes die when it is killed."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from berth_operator.local.runner import die_with_parent
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

EXIT_CODE = "kwok.berth.dev/exit-code"
EXIT_REASON = "kwok.berth.dev/exit-reason"
TERMINATION_MESSAGE = "kwok.berth.dev/termination-message"


def terminate_pod(
    core_v1: client.CoreV1Api,
    namespace: str,
    pod_name: str,
    exit_code: int,
    message: str | None = None,
    reason: str | None = None,
) -> None:
    """Make a Running KWOK pod's containers exit with `exit_code` (and reason/message).

    The pod becomes Succeeded for 0 and Failed otherwise, as a real kubelet would report it with
    restartPolicy Never.
    """
    annotations = {EXIT_CODE: str(exit_code)}
    if message is not None:
        annotations[TERMINATION_MESSAGE] = message
    if reason is not None:
        annotations[EXIT_REASON] = reason
    core_v1.patch_namespaced_pod(pod_name, namespace, {"metadata": {"annotations": annotations}})


# ---------------------------------------------------------------------------------------------
# Nodes of a test's own, and KWOK processes of its own that can die.

#: KWOK processes manage the nodes whose annotation MANAGER has their value; the cluster's own
#: process (hack/testcluster/kwok.py) manages CLUSTER_KWOK.
MANAGER = "kwok.x-k8s.io/node"
CLUSTER_KWOK = "fake"
KWOK = REPO / ".cluster" / "bin" / "kwok"
STAGES = REPO / "hack" / "kwok" / "stages"


def fake_node(
    name: str,
    labels: dict[str, str],
    taints: list[dict[str, str]],
    manager: str = CLUSTER_KWOK,
    gpus: int = 4,
) -> dict[str, Any]:
    """A Node for KWOK process `manager` with `gpus` nvidia.com/gpu, `labels` and `taints`.

    Tests own such nodes: their label and taint keep every other test's pods away.
    """
    resources = {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {MANAGER: manager, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, **labels},
        },
        "spec": {"taints": taints},
        "status": {"allocatable": resources, "capacity": resources},
    }


def spread_over_nodes(key: str, value: str, match_labels: dict[str, str]) -> dict[str, Any]:
    """A PodSpec's placement: only onto the nodes labelled and tainted (NoSchedule) `key=value`,
    at most one pod matching `match_labels` more on any of them than on another. Tainted nodes
    (cordoned, unreachable) are no spreading domain (`nodeTaintsPolicy: Honor`), so the pods of
    a group restarted after one is lost fit on the others."""
    return {
        "nodeSelector": {key: value},
        "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "nodeTaintsPolicy": "Honor",
                "labelSelector": {"matchLabels": match_labels},
            }
        ],
    }


def node_ready(node: client.V1Node) -> str | None:
    """The status of the Node's Ready condition ("True", "False", "Unknown"), None if absent."""
    for condition in node.status.conditions or []:
        if condition.type == "Ready":
            return str(condition.status)
    return None


@contextlib.contextmanager
def fake_nodes(core_v1: client.CoreV1Api, nodes: list[dict[str, Any]]) -> Iterator[list[str]]:
    """Create `nodes`, wait until each is Ready, yield their names; delete them at exit,
    whatever happened."""
    names = [node["metadata"]["name"] for node in nodes]
    try:
        for node in nodes:
            core_v1.create_node(node)
        wait_for(
            lambda: all(node_ready(core_v1.read_node(name)) == "True" for name in names),
            timeout=60,
            what=f"nodes {names} Ready",
        )
        yield names
    finally:
        for name in names:  # their Leases go by garbage collection (owned by the Node)
            with contextlib.suppress(ApiException):
                core_v1.delete_node(name)


class KwokProcess:
    """A KWOK process of a test's own that manages only the nodes annotated
    `kwok.x-k8s.io/node=<manager>`, with the cluster's stages (hack/kwok/stages).

    Killing it is a node's death: nothing renews those nodes' Leases any more, so after the
    controller manager's node-monitor grace period (about 50 s) they turn `Ready=Unknown` and
    get the `unreachable` taints; their pods stay as they were (no kubelet finishes a deletion).
    Removing the annotation would not do: the process keeps its heartbeat for nodes it knows.
    Pod IPs come from `pod_cidr`, apart from the cluster's process (127.20.0.0/16).

        with kwok_process("doomed", kubeconfig, tmp_path) as kwok:
            ...  # nodes annotated kwok.x-k8s.io/node=doomed work
            kwok.kill()  # and now they are dead
    """

    def __init__(
        self,
        manager: str,
        kubeconfig: str,
        workdir: Path,
        pod_cidr: str = "127.21.0.0/16",
        node_ip: str = "127.19.0.2",
    ):
        self.manager, self.kubeconfig, self.workdir = manager, kubeconfig, workdir
        self.pod_cidr, self.node_ip = pod_cidr, node_ip
        self.log = workdir / f"kwok-{manager}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        options = (
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n"
            f"  cidr: {self.pod_cidr}\n  nodeIP: {self.node_ip}\n  nodeLeaseDurationSeconds: 40\n"
            "  nodeLeaseParallelism: 1\n  podPlayStageParallelism: 2\n"
            "  nodePlayStageParallelism: 1\n  podsOnNodeSyncParallelism: 1\n"
        )
        stages = (path.read_text() for path in sorted(STAGES.glob("*.yaml")))
        return "---\n".join([options, *stages])

    def start(self) -> KwokProcess:
        path = self.workdir / f"kwok-{self.manager}.yaml"
        path.write_text(self.config())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(KWOK),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--config={path}",
                    f"--manage-nodes-with-annotation-selector={MANAGER}={self.manager}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # no orphan heartbeat if pytest dies
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL, as a machine losing power: its nodes die."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def kwok_process(manager: str, kubeconfig: str, workdir: Path) -> Iterator[KwokProcess]:
    """A started KwokProcess, killed at exit if it still runs."""
    process = KwokProcess(manager, kubeconfig, workdir).start()
    try:
        yield process
    finally:
        process.kill()
