"""Is it up? Readiness probes of the components, kubectl, and the nodes' Ready condition."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from typing import Any

from .config import COMPONENTS, KUBECONFIG, KWOK_NODES, PKI, STATE_FILE, binaries, read_state
from .processes import pid_alive
from .realnode.node import NODE_COMPONENTS, NODE_NAME


def apiserver_ready(host: str, port: int) -> bool:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    try:
        with urllib.request.urlopen(f"https://{host}:{port}/readyz", context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def etcd_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return b'"true"' in r.read()
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def kubectl(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries()["kubectl"]), "--kubeconfig", str(KUBECONFIG), *args],
        check=check,
        capture_output=True,
        text=True,
        input=input,
    )


def ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def nodes_ready(real_node: bool) -> bool:
    """The 4 KWOK nodes, and the real node when there is one, are Ready."""
    out = kubectl("get", "nodes", "-o", "json", check=False)
    if out.returncode:
        return False
    items = json.loads(out.stdout)["items"]
    names = {n["metadata"]["name"] for n in items}
    if real_node and NODE_NAME not in names:
        return False
    return len(items) >= KWOK_NODES + real_node and all(ready(n) for n in items)


def real_node_killed(state: dict[str, Any]) -> bool:
    """The real node is down after `kill-node` (until `start-node`)."""
    return bool((state.get("real_node") or {}).get("killed"))


def running() -> bool:
    """Every component of the control plane runs and the apiserver is ready; so does the real
    node's, unless it was killed (`kill-node`: then only CoreDNS, which outlives it)."""
    if not STATE_FILE.exists():
        return False
    state = read_state()
    node: tuple[str, ...] = ()
    if state.get("real_node"):
        node = ("coredns",) if real_node_killed(state) else NODE_COMPONENTS
    if not all(pid_alive(c) for c in COMPONENTS + node):
        return False
    return apiserver_ready(state.get("apiserver_host", "127.0.0.1"), state["apiserver_port"])
