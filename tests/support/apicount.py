"""Count one client's API requests from the API server's own metrics.

The client runs as a ServiceAccount; a FlowSchema routes that account's requests of the given
verbs to a priority level, and the API server counts what each FlowSchema dispatched in
`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`. Watches can be left out by
verb, so a long-running watch reconnecting does not count as a request.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

#: Every verb but watch.
READS_AND_WRITES = ("get", "list", "create", "update", "patch", "delete", "deletecollection")


def admin_account(api: client.ApiClient, namespace: str, account: str, binding: str) -> None:
    """ServiceAccount `account` in `namespace`, bound to cluster-admin by `binding`."""
    client.CoreV1Api(api).create_namespaced_service_account(
        namespace, {"metadata": {"name": account}}
    )
    client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
        {
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
    )


def service_account_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: str, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as `account` with a TokenRequest token."""
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            account, namespace, {"spec": {"expirationSeconds": 3600}}
        )
        .status.token
    )
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "berth-test", "cluster": cluster}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "berth-test", "user": account}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def flow_schema(
    name: str, namespace: str, account: str, verbs: tuple[str, ...] = READS_AND_WRITES
) -> dict[str, Any]:
    """A FlowSchema taking `account`'s requests of `verbs` (any resource, any URL)."""
    subject = {
        "kind": "ServiceAccount",
        "serviceAccount": {"namespace": namespace, "name": account},
    }
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [subject],
                    "resourceRules": [
                        {
                            "verbs": list(verbs),
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": list(verbs), "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def dispatched(schema: str) -> float:
    """Requests the API server has dispatched under FlowSchema `schema` since it started
    (read with `kubectl get --raw /metrics` as the admin of $KUBECONFIG)."""
    text = subprocess.run(
        ["kubectl", "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{")
        and f'flow_schema="{schema}"' in line
    )
