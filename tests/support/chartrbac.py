"""Run a test's own operator under the chart's RBAC instead of admin credentials.

`helm template charts/berth` (namespaced mode, watching the test's namespace, with the given
values) renders the chart's ServiceAccount, ClusterRole, Role and their bindings; they are
created as they are, and a TokenRequest token of that ServiceAccount makes the kubeconfig. A
verb the chart forgot is then a 403 in the operator's log, as it would be in a real install.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.apicount import service_account_kubeconfig
from tests.support.waiting import wait_for
from tests.unit.chart.helm import CHART, run_helm

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
CRDS = "apiextensions.k8s.io"


def render_rbac(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's RBAC objects for operator `release` installed in and watching `namespace`."""
    values = {**values, "watchNamespaces": [namespace]}
    result = run_helm("template", release, str(CHART), "--namespace", namespace, values=values)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in docs} == set(RBAC_KINDS), docs
    return docs


@contextlib.contextmanager
def chart_rbac_kubeconfig(
    api: client.ApiClient,
    admin_kubeconfig: str,
    namespace: str,
    path: Path,
    values: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """A kubeconfig of the chart's ServiceAccount in `namespace` (release `berth-<namespace>`,
    so its cluster-scoped names are the test's own), its RBAC in force; deleted after."""
    release = f"berth-{namespace}"  # contains the chart's name: objects are named `release`
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    create = {
        "ServiceAccount": lambda body: core.create_namespaced_service_account(namespace, body),
        "Role": lambda body: rbac.create_namespaced_role(namespace, body),
        "RoleBinding": lambda body: rbac.create_namespaced_role_binding(namespace, body),
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
    }
    docs = render_rbac(release, namespace, values or {})
    try:
        for doc in docs:
            create[doc["kind"]](doc)
        # The authorizer follows RBAC objects through watches: wait until both bindings count.
        wait_for(
            lambda: (
                allowed(api, namespace, release, "list", "pods", namespace=namespace)
                and allowed(api, namespace, release, "list", "customresourcedefinitions", CRDS)
            ),
            timeout=30,
            what=f"RBAC of {release} in force",
        )
        yield service_account_kubeconfig(api, admin_kubeconfig, namespace, release, path)
    finally:
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            with contextlib.suppress(ApiException):
                delete(release)


def allowed(
    api: client.ApiClient,
    account_namespace: str,
    account: str,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
) -> bool:
    """Whether ServiceAccount `account_namespace/account` may `verb` `resource` of API `group`
    in `namespace` (None: cluster-wide)."""
    attributes = {"group": group, "resource": resource, "verb": verb}
    if namespace is not None:
        attributes["namespace"] = namespace
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:{account_namespace}:{account}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{account_namespace}"],
                "resourceAttributes": attributes,
            }
        }
    )
    return bool(review.status.allowed)
