"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import PIDS, PKI, SERVICE_CIDR, STATE, read_state
from .health import apiserver_ready, etcd_ready, running
from .processes import start, stop, wait_until


def start_etcd(etcd: Path, ports: dict[str, int]) -> None:
    start(
        "etcd",
        [
            str(etcd),
            "--name",
            "berth",
            "--data-dir",
            str(STATE / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{ports['etcd']}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{ports['etcd']}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-cluster",
            f"berth=http://127.0.0.1:{ports['etcd_peer']}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
            "--quota-backend-bytes",
            str(2 << 30),
        ],
    )


def wait_for_etcd(ports: dict[str, int]) -> None:
    wait_until("etcd health", lambda: etcd_ready(ports["etcd"]), 30, "etcd")


def start_apiserver(apiserver: Path, ports: dict[str, int], host: str, with_node: bool) -> None:
    """On `host`: the bridge address with the real node (pods reach it there), else loopback."""
    if with_node:
        # Pods reach the apiserver on the bridge; the `kubernetes` Service's endpoint follows
        # the advertised address (lease reconciler). Kubelet connections: by InternalIP only.
        node_flags = [
            "--endpoint-reconciler-type=lease",
            "--authorization-mode=Node,RBAC",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
        ]
    else:
        node_flags = ["--endpoint-reconciler-type=none", "--authorization-mode=RBAC"]
    start(
        "kube-apiserver",
        [
            str(apiserver),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={PKI / 'apiserver.crt'}",
            f"--tls-private-key-file={PKI / 'apiserver.key'}",
            f"--client-ca-file={PKI / 'ca.crt'}",
            f"--service-account-key-file={PKI / 'sa.pub'}",
            f"--service-account-signing-key-file={PKI / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            *node_flags,
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ],
    )


def wait_for_apiserver(host: str, port: int) -> None:
    ready = lambda: apiserver_ready(host, port)  # noqa: E731
    wait_until("kube-apiserver /readyz", ready, 90, "kube-apiserver")


def start_controllers(bins: dict[str, Path]) -> None:
    """kube-controller-manager (its default controllers) and kube-scheduler."""
    start(
        "kube-controller-manager",
        [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={STATE / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={STATE / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={STATE / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={PKI / 'sa.key'}",
            f"--root-ca-file={PKI / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
            f"--cluster-signing-key-file={PKI / 'ca.key'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--concurrent-gc-syncs=5",
            "--v=1",
        ],
    )
    start(
        "kube-scheduler",
        [
            str(bins["kube-scheduler"]),
            f"--kubeconfig={STATE / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={STATE / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={STATE / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--v=1",
        ],
    )


def restart_apiserver() -> None:
    """Stop kube-apiserver and start it again on the same port (tests of watch reconnects)."""
    if not running():
        sys.exit("error: the control plane is not running")
    argv = json.loads((PIDS / "kube-apiserver.argv").read_text())
    stop(("kube-apiserver",))
    start("kube-apiserver", argv)
    state = read_state()
    wait_for_apiserver(state.get("apiserver_host", "127.0.0.1"), state["apiserver_port"])
    print("kube-apiserver restarted")
