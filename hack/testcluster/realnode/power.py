"""Power loss and boot of the real node, for tests of what the operator does when a node dies.

`kill_node()` is a power loss: the kubelet, containerd, kube-proxy and kube-network-policies,
every containerd shim and every container process get SIGKILL at once (no SIGTERM: no pod sees
a shutdown), and the pods' network namespaces go (their addresses stop answering on the bridge,
as a dead machine's do). Nothing touches the API objects: the Node stays, with its pods bound
to it, and the API server learns of the loss only because the kubelet stops renewing its
lease and posting status; the node-lifecycle controller marks the node's Ready condition
Unknown after its grace period (~50 s here) and taints it `node.kubernetes.io/unreachable`.

Not part of the node: the bridge (its address is the API server's too) and CoreDNS. CoreDNS is
the cluster's DNS service, which a real cluster runs as replicas on other nodes; here it runs
on the host, answering on the bridge address, and only the real node's pods (the kubelet's
clusterDNS) and tests that query it directly use it, so it keeps running. The control plane
and KWOK do not depend on the node.

`start_node()` is the boot after it, with the same configuration (the components' recorded
argv, configs, certificates and ports): what survived the loss on disk stays (images,
the kubelet's root), what lived in memory is gone (containers, mounts, network namespaces,
IP allocations), and the components start again in their order. The kubelet re-registers the
existing Node, which turns Ready; once the node-lifecycle controller has lifted its taints,
pods run on it again. state.json's `real_node.killed` records the loss in between, so
`status` counts the control plane as running and `up` boots the node; `down` and `leftovers`
work after a loss as after a crash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import STATE, STATE_FILE, read_state, write_state
from ..health import kubectl, ready
from ..processes import Failure, kill, pid_alive, start_again, stop, wait_until
from .containerd import (
    ctr,
    freeze_containers,
    kill_containers,
    kill_with_sockets,
    restart_containerd,
)
from .host import bridge_netns, cni_results, delete_netns, delete_nft_table, unmount_under
from .node import NODE_COMPONENTS, NODE_NAME, NODE_PROCESSES, Node

#: Taints the node-lifecycle controller puts on a node that stopped reporting, and lifts when it
#: is Ready again.
LOST_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


def kill_node() -> None:
    """The real node loses power (see the module's docstring); the API objects are left alone."""
    state = _node_state()
    state["real_node"]["killed"] = True
    write_state(state)
    frozen = freeze_containers(Node(STATE))
    kill(NODE_PROCESSES)
    kill_with_sockets(frozen)  # /run, the sockets' home, is gone after a power loss too
    _delete_pod_netns()


def start_node(timeout: float = 90) -> None:
    """Boot the real node after `kill_node` (or a crash of its components) with the same
    configuration, and wait until it is Ready and untainted; a node that runs is left as is."""
    state = _node_state()
    real = state["real_node"]
    if not real.get("killed") and all(pid_alive(c) for c in NODE_COMPONENTS):
        return
    node = Node(STATE)
    kill(NODE_PROCESSES)  # what a partial crash left running: the boot starts from nothing
    # Forget the containers, keep the images (as `down` does after a crash), then stop
    # containerd so that its CRI plugin starts again without them.
    restart_containerd(node)
    if pid_alive("containerd"):
        kill_containers(node)
    stop(("containerd",))
    _forget_volatile(node)
    for name in NODE_COMPONENTS:
        if not pid_alive(name) and not start_again(name):
            raise Failure(f"no recorded command line for {name}: `hack/cluster.py up` again")
        if name == "containerd":
            answers = lambda: ctr(node, "version", check=False).returncode == 0  # noqa: E731
            wait_until("containerd", answers, 30, "containerd")
    wait_until(f"{NODE_NAME} Ready and untainted", _schedulable, timeout, "kubelet")
    real["killed"] = False
    write_state(state)


def _delete_pod_netns() -> None:
    for name in bridge_netns():
        delete_netns(Path("/var/run/netns") / name)


def _forget_volatile(node: Node) -> None:
    """What a boot does not find: mounts, network namespaces, IP allocations (the CNI plugin
    never heard of the containers' end), kube-network-policies' table (its queue has no reader)."""
    _delete_pod_netns()
    unmount_under(node.dir)
    shutil.rmtree(node.ipam, ignore_errors=True)
    node.ipam.mkdir(parents=True, exist_ok=True)
    for result in cni_results():
        result.unlink(missing_ok=True)
    delete_nft_table()


def _schedulable() -> bool:
    out = kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
    if out.returncode:
        return False
    found = json.loads(out.stdout)
    taints = {t["key"] for t in found.get("spec", {}).get("taints") or []}
    return ready(found) and not taints & set(LOST_TAINTS)


def _node_state() -> dict[str, Any]:
    state = read_state() if STATE_FILE.exists() else {}
    if not state.get("real_node"):
        raise Failure("the cluster has no real node (it runs with --kwok-only, or not at all)")
    return state
