"""Real TCP connection attempts from a real container on the real node (NetworkPolicy tests).

A probe pod runs Python in one of Berth's images, tries to connect to each port of one address
with a bounded timeout and prints what happened as JSON: "open", "timeout" (the SYN went
unanswered: a NetworkPolicy implementation dropped it) or the error's name ("refused": nothing
listens; "unreachable": no such host on the bridge). Only "timeout" proves a policy at work.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from tests.support.podsecurity import restricted_pod
from tests.support.realnode import RealNode
from tests.support.waiting import wait_for

#: Seconds one connection attempt may take; the probe pod is bounded by it too.
CONNECT_TIMEOUT = 3.0

_SCRIPT = """
import errno, json, socket, sys
host, ports, timeout = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
names = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "unreachable"}
found = {}
for port in ports:
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        found[port] = "open"
    except socket.timeout:
        found[port] = "timeout"
    except OSError as error:
        found[port] = names.get(error.errno, f"error {error.errno}")
print(json.dumps(found))
"""


def start_probe(
    core: client.CoreV1Api,
    node: RealNode,
    namespace: str,
    name: str,
    address: str,
    ports: list[int],
    labels: dict[str, str] | None = None,
) -> None:
    """Create the probe pod `name` (with `labels`) trying `address`:`ports` from the node."""
    attempts = ",".join(str(p) for p in ports)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": restricted_pod(
            {
                **node.placement(),
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": False,
                "activeDeadlineSeconds": int(60 + CONNECT_TIMEOUT * len(ports)),
                "containers": [
                    {
                        "name": "probe",
                        "image": node.image("operator"),  # any Berth image has Python
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", _SCRIPT],
                        "args": [address, attempts, str(CONNECT_TIMEOUT)],
                    }
                ],
            }
        ),
    }
    core.create_namespaced_pod(namespace, body)


def probe_result(core: client.CoreV1Api, namespace: str, name: str) -> dict[int, str]:
    """What the probe pod `name` found, per port, once it finished; the pod is deleted."""
    done = wait_for(
        lambda: (
            (p := core.read_namespaced_pod(name, namespace)).status.phase in ("Succeeded", "Failed")
            and p
        ),
        timeout=90,
        what=f"probe pod {namespace}/{name} finished",
    )
    logs = core.read_namespaced_pod_log(name, namespace)
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    assert done.status.phase == "Succeeded", logs
    return {int(port): result for port, result in json.loads(logs.strip().splitlines()[-1]).items()}
