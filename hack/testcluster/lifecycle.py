"""`up` and `down` of the whole cluster: the order the components start in and stop in."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from . import controlplane, kwok
from .config import (
    COMPONENTS,
    KUBECONFIG,
    KWOK_NODES,
    LOGS,
    PIDS,
    PKI,
    STATE,
    STATE_FILE,
    binaries,
    cache_dir,
    read_state,
    versions,
    write_state,
)
from .health import kubectl, nodes_ready, real_node_killed, running
from .kueue import start_kueue
from .pki import make_pki, write_kubeconfig
from .processes import Failure, free_port, pid_alive, stop, wait_until
from .realnode import components, power
from .realnode.containerd import kill_containers, restart_containerd
from .realnode.host import link_exists, missing_host_tools
from .realnode.images import import_images
from .realnode.node import BRIDGE, BRIDGE_IP, NODE_NAME, Node, read_json
from .realnode.teardown import teardown


def up(kwok_only: bool) -> None:
    if running():
        if read_state().get("real_node"):  # rebuilt images reach a running node too
            if real_node_killed(read_state()):
                try:
                    power.start_node()
                except Failure as failure:  # the control plane runs on: leave it up
                    sys.exit(f"error: {failure}")
            import_images(Node(STATE), read_state())
        print_usage()
        return
    stop_all()
    with_node = not kwok_only
    bins = binaries(node=with_node)
    node = Node(STATE)
    if with_node:
        if os.geteuid() != 0:
            sys.exit("error: the real node needs root; `hack/cluster.py up --kwok-only` does not")
        if missing := missing_host_tools():
            sys.exit(f"error: missing {', '.join(missing)}: run hack/install-node-deps.sh")
        if link_exists(BRIDGE):  # stop_all() removed our own
            sys.exit(
                f"error: bridge {BRIDGE} exists: another cluster directory runs the one "
                "real node this machine can have; stop it, or use --kwok-only"
            )
    for d in (PKI, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    make_pki(with_node)
    names = ["etcd", "etcd_peer", "apiserver", "kwok", "kueue_webhook", "kueue_health"]
    if with_node:
        names += ["kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics"]
        names += ["dns_health", "dns_ready", "netpol_metrics"]
    ports = {k: free_port() for k in names}
    host = BRIDGE_IP if with_node else "127.0.0.1"
    server = f"https://{host}:{ports['apiserver']}"
    users = ["admin", "controller-manager", "scheduler", "kwok", "kueue"]
    users += ["kubelet", "kube-proxy", "coredns", "kube-network-policies"] if with_node else []
    for user in users:
        write_kubeconfig(STATE / f"{user}.kubeconfig", server, user)
    shutil.copy(STATE / "admin.kubeconfig", KUBECONFIG)
    KUBECONFIG.chmod(0o600)

    controlplane.start_etcd(bins["etcd"], ports)
    pause_ref = f"localhost/pause:{versions()['PAUSE_VERSION']}"
    if with_node:  # the bridge address must exist before the apiserver binds it
        components.start_containerd(node, pause_ref)
    controlplane.wait_for_etcd(ports)
    controlplane.start_apiserver(bins["kube-apiserver"], ports, host, with_node)
    if with_node:  # while the apiserver starts
        components.import_pause(node, bins["pause"], pause_ref)
    controlplane.wait_for_apiserver(host, ports["apiserver"])
    controlplane.start_controllers(bins)
    kwok.start_kwok(bins["kwok"], ports)
    state: dict[str, Any] = {
        "apiserver_port": ports["apiserver"],
        "apiserver_host": host,
        "server": server,
        "ports": ports,
    }
    if with_node:
        components.apply_rbac()
        components.start_components(node, bins, ports)
        state["real_node"] = components.node_state(node, pause_ref)
    write_state(state)

    wait_until(
        "the default namespace",
        lambda: kubectl("get", "namespace", "default", check=False).returncode == 0,
        30,
        "kube-apiserver",
    )
    kwok.create_nodes()
    what = f"{KWOK_NODES} KWOK nodes" + (f" and {NODE_NAME}" if with_node else "")
    wait_until(
        f"{what} Ready", lambda: nodes_ready(with_node), 60, "kubelet" if with_node else "kwok"
    )
    wait_until(
        "the default ServiceAccount",
        lambda: kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        60,
        "kube-controller-manager",
    )
    start_kueue(bins["kueue"], ports)
    if with_node:
        components.wait_for_coredns(ports)
        print(f"control plane and {NODE_NAME} up in {time.monotonic() - t0:.1f}s")
        import_images(node, state)
    else:
        print(f"control plane up in {time.monotonic() - t0:.1f}s")
    print_usage()


def print_usage() -> None:
    print(
        f"kubeconfig: {KUBECONFIG}\n"
        f"  export KUBECONFIG={KUBECONFIG} PATH={STATE / 'bin'}:$PATH\n"
        "  kubectl get nodes\n"
        f"logs: {LOGS}/; stop with `make cluster-down`"
    )


def stop_all() -> None:
    """Stop everything `up` started; a real node's containers go first and its host changes
    are undone (realnode/teardown.py), also after a crash or `kill-node`."""
    node = Node(STATE)
    record = read_json(node.sysctls)
    was_up = isinstance(record, dict) and not record.get("restored", True)
    stop(("kubelet",))  # so that nothing restarts the containers killed next
    if was_up and not pid_alive("containerd"):
        restart_containerd(node)  # after a crash: to forget its containers, keep its images
    containerd_up = pid_alive("containerd")
    if containerd_up:
        kill_containers(node)
    stop(("kube-proxy", "kube-network-policies", "coredns", "containerd"))
    # kube-apiserver lingers ~15 s after it stopped listening; its state goes with etcd's.
    stop(tuple(reversed(COMPONENTS)), grace=5)
    if was_up and os.geteuid() == 0:  # this directory's node (another's bridge is not ours)
        proxy = cache_dir() / "bin" / f"kube-proxy-{versions()['KUBERNETES_VERSION']}"
        for left in teardown(node, proxy, containerd_up):
            print(f"warning: left behind: {left}", file=sys.stderr)
    for path in (PIDS, STATE / "etcd", PKI, STATE_FILE):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
