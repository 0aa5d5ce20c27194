"""The real node's processes (containerd, CoreDNS, kube-proxy, kube-network-policies, the
kubelet) and the RBAC of the identities CoreDNS and kube-network-policies run as."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import PKI, STATE
from ..health import http_ok, kubectl
from ..processes import start, wait_until
from .configs import containerd_config, corefile, kube_proxy_config, kubelet_config
from .containerd import ctr
from .host import prepare_host
from .images import import_archive, pause_image
from .node import BRIDGE, BRIDGE_IP, LABEL, NODE_NAME, POD_CIDR, Node

#: The real node's CoreDNS reads Services, EndpointSlices, Namespaces (and Pods) as this user.
COREDNS_USER = "berth:coredns"
#: The real node's kube-network-policies reads what NetworkPolicies select, as this user.
NETPOL_USER = "berth:kube-network-policies"


def read_only_rbac(user: str, rules: list[dict[str, object]]) -> dict[str, object]:
    """A ClusterRole of `rules` bound to the client-certificate user `user`."""
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": user},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": user},
                "roleRef": ref,
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            },
        ],
    }


COREDNS_RBAC = read_only_rbac(
    COREDNS_USER,
    [
        {
            "apiGroups": [""],
            "resources": ["endpoints", "services", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ],
)
NETPOL_RBAC = read_only_rbac(
    NETPOL_USER,
    [
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["list", "watch"],
        },
    ],
)


def start_components(node: Node, bins: dict[str, Path], ports: dict[str, int]) -> None:
    """CoreDNS, kube-proxy and the kubelet (containerd runs, with the pause image, already)."""
    dns_config = corefile(
        node, STATE / "coredns.kubeconfig", ports["dns_health"], ports["dns_ready"]
    )
    start("coredns", [str(bins["coredns"]), "-conf", str(dns_config)])
    proxy = kube_proxy_config(
        node, STATE / "kube-proxy.kubeconfig", ports["proxy_healthz"], ports["proxy_metrics"]
    )
    start("kube-proxy", [str(bins["kube-proxy"]), f"--config={proxy}", "--v=1"])
    # Before the kubelet: no pod of a policy runs unenforced. Teardown deletes its nftables table.
    start(
        "kube-network-policies",
        [
            str(bins["kube-network-policies"]),
            f"--kubeconfig={STATE / 'kube-network-policies.kubeconfig'}",
            f"--hostname-override={NODE_NAME}",
            f"--metrics-bind-address=127.0.0.1:{ports['netpol_metrics']}",
            "--disable-nri",  # pod IPs from the API server: this containerd runs no NRI
            "--v=1",
        ],
    )
    config = kubelet_config(node, PKI, ports["kubelet"], ports["kubelet_healthz"])
    start(
        "kubelet",
        [
            str(bins["kubelet"]),
            f"--config={config}",
            f"--kubeconfig={STATE / 'kubelet.kubeconfig'}",
            f"--root-dir={node.kubelet}",
            f"--cert-dir={node.kubelet / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={BRIDGE_IP}",
            f"--node-labels={LABEL}=true",
            "--v=1",
        ],
    )


def start_containerd(node: Node, pause_ref: str) -> None:
    """The host's bridge first (the apiserver binds its address), then containerd."""
    prepare_host(node)
    start("containerd", ["containerd", "--config", str(containerd_config(node, pause_ref))])


def import_pause(node: Node, pause: Path, pause_ref: str) -> None:
    """Once containerd answers: the sandbox image, made here from the built `pause` binary."""
    containerd_ok = lambda: ctr(node, "version", check=False).returncode == 0  # noqa: E731
    wait_until("containerd", containerd_ok, 30, "containerd")
    archive = pause_image(pause, pause_ref, node.dir / "pause.tar")
    import_archive(node, pause_ref, archive)


def apply_rbac() -> None:
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(COREDNS_RBAC))
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(NETPOL_RBAC))


def wait_for_coredns(ports: dict[str, int]) -> None:
    ready = f"http://127.0.0.1:{ports['dns_ready']}/ready"
    wait_until("CoreDNS ready", lambda: http_ok(ready), 30, "coredns")


def node_state(node: Node, pause_ref: str) -> dict[str, Any]:
    """state.json's `real_node`: what tests need to know of the node."""
    return {
        "name": NODE_NAME,
        "label": {"key": LABEL, "value": "true"},
        "taint": {"key": LABEL, "value": "true", "effect": "NoSchedule"},
        "containerd_address": str(node.socket),
        "bridge": BRIDGE,
        "bridge_ip": BRIDGE_IP,
        "pod_cidr": POD_CIDR,
        "dns_ip": BRIDGE_IP,
        "cluster_domain": "cluster.local",
        "pause_image": pause_ref,
        "images": [pause_ref],
    }
