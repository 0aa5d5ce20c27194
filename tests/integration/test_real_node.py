"""The real node of the test cluster (hack/cluster.py, hack/testcluster/realnode/) runs real pods.

Pods get an address on the node's bridge, no default route (nothing they send can leave the
machine), names from CoreDNS and a route to the Service CIDR; the apiserver reaches the kubelet
for `kubectl logs`. The pods run the locally built `pause` image, so the test needs no other
image; the host's python, entered into a pod's network namespace, connects to the `kubernetes`
Service; with an image that has python (hack/build-images.sh), a pod does that itself, by
name. Teardown (nothing left on the host after `down`) is checked by hack/test.sh with
`hack/cluster.py leftovers`, after the session's cluster stops.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.podsecurity import restricted_pod
from tests.support.realnode import RealNode
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def node(kubeconfig: str) -> RealNode:
    """The real node; fails on a `--kwok-only` cluster (`make test` has the node)."""
    return RealNode.from_cluster()


def pod(name: str, node: RealNode, image: str, **spec: Any) -> dict[str, Any]:
    """A pod pinned to the real node, with an imported image (never pulled)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "peer"}},
        "spec": restricted_pod(
            {
                **node.placement(),
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never"}],
                **spec,
            }
        ),
    }


def running(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 60) -> Any:
    return wait_for(
        lambda: (p := core.read_namespaced_pod(name, namespace)).status.phase == "Running" and p,
        timeout=timeout,
        what=f"pod {name} Running",
    )


def dns_a(server: str, name: str) -> tuple[int, list[str]]:
    """(rcode, A addresses) of one UDP query to `server`:53, parsed by hand (no resolver of
    the host is involved)."""
    query_id = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(packet, (server, 53))
        reply = s.recv(4096)
    rid, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    assert rid == query_id
    at = 12 + len(question) + 4

    def skip_name(i: int) -> int:
        while reply[i]:
            if reply[i] & 0xC0 == 0xC0:
                return i + 2
            i += reply[i] + 1
        return i + 1

    found = []
    for _ in range(answers):
        at = skip_name(at)
        rtype, _, _, length = struct.unpack(">HHIH", reply[at : at + 10])
        at += 10
        if rtype == 1:
            found.append(socket.inet_ntoa(reply[at : at + length]))
        at += length
    return flags & 0xF, found


def container_pid(node: RealNode, pod_status: Any) -> int:
    """The host pid of the pod's first container, from containerd."""
    container = pod_status.container_statuses[0].container_id.split("://", 1)[1]
    return node.tasks()[container][0]


def routes(pid: int) -> list[tuple[str, str]]:
    """(destination, mask) of the routes in `pid`'s network namespace."""
    lines = Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]

    def ip(field: str) -> str:
        return socket.inet_ntoa(struct.pack("<I", int(field, 16)))

    return [(ip(f[1]), ip(f[7])) for f in (line.split() for line in lines)]


def test_real_node_is_ready_tainted_and_labelled(api: client.ApiClient, node: RealNode) -> None:
    found = client.CoreV1Api(api).read_node(node.name)
    ready = [c for c in found.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    assert found.metadata.labels[node.label[0]] == node.label[1]
    assert any((t.key, t.value, t.effect) == node.taint for t in found.spec.taints)
    internal = [a.address for a in found.status.addresses if a.type == "InternalIP"]
    assert internal == [node.bridge_ip]


def test_pods_get_bridge_ips_dns_names_no_default_route_and_logs(
    api: client.ApiClient, namespace: str, node: dict
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "peers"},
            "spec": {"clusterIP": "None", "selector": {"app": "peer"}},
        },
    )
    for i in range(2):
        core.create_namespaced_pod(
            namespace, pod(f"peer-{i}", node, node.pause_image, hostname=f"peer-{i}",
                           subdomain="peers")
        )  # fmt: skip
    pods = [running(core, namespace, f"peer-{i}") for i in range(2)]
    subnet = ipaddress.ip_network(node.pod_cidr)
    for p in pods:
        assert p.spec.node_name == node.name
        assert ipaddress.ip_address(p.status.pod_ip) in subnet

    domain = f"peers.{namespace}.svc.{node.cluster_domain}"
    for p in pods:
        wait_for(
            lambda p=p: dns_a(node.dns_ip, f"{p.metadata.name}.{domain}") == (0, [p.status.pod_ip]),
            timeout=10,
            what=f"{p.metadata.name}.{domain} resolving to {p.status.pod_ip}",
        )
    rcode, addresses = dns_a(node.dns_ip, domain)
    assert rcode == 0 and sorted(addresses) == sorted(p.status.pod_ip for p in pods)
    # No forwarding: a name outside the cluster is refused, not looked up elsewhere.
    assert dns_a(node.dns_ip, "example.com")[1] == []

    pid = container_pid(node, pods[0].status)
    table = routes(pid)
    assert ("0.0.0.0", "0.0.0.0") not in table, table
    assert ("10.96.0.0", "255.255.0.0") in table, table
    # From the pod's network namespace, the `kubernetes` Service (kube-proxy's DNAT to the
    # apiserver on the bridge address) answers.
    connect = "import socket; socket.create_connection(('10.96.0.1', 443), timeout=5).close()"
    inside = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", connect],
        capture_output=True,
        text=True,
    )
    assert inside.returncode == 0, inside.stderr

    logs = subprocess.run(
        ["kubectl", "logs", "-n", namespace, "peer-0"], capture_output=True, text=True
    )
    assert logs.returncode == 0, logs.stderr  # apiserver -> kubelet (TLS, webhook authz) works


PROBE = """
import http.client, socket, ssl
print("resolved", socket.gethostbyname("kubernetes.default.svc.cluster.local"), flush=True)
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
tls = ssl.create_default_context(cafile=sa + "ca.crt")
api = http.client.HTTPSConnection("kubernetes.default.svc", 443, context=tls, timeout=5)
api.request("GET", "/api", headers={"Authorization": "Bearer " + open(sa + "token").read()})
print("connected", api.sock.getpeername()[0], api.getresponse().status, flush=True)
"""


def test_pod_resolves_and_reaches_the_kubernetes_service(
    api: client.ApiClient, namespace: str, node: dict
) -> None:
    image = node.image("operator")  # any Berth image has python
    core = client.CoreV1Api(api)
    # As an in-cluster client does: by name, TLS against the cluster CA, its ServiceAccount token.
    probe = pod("probe", node, image, restartPolicy="Never", automountServiceAccountToken=True)
    probe["spec"]["containers"][0] |= {"command": ["python3", "-c", PROBE]}
    core.create_namespaced_pod(namespace, probe)
    done = wait_for(
        lambda: (
            (p := core.read_namespaced_pod("probe", namespace)).status.phase
            in ("Succeeded", "Failed")
            and p
        ),
        timeout=60,
        what="probe pod finished",
    )
    logs = core.read_namespaced_pod_log("probe", namespace)
    assert done.status.phase == "Succeeded", logs
    assert "resolved 10.96.0.1" in logs and "connected 10.96.0.1 200" in logs, logs
