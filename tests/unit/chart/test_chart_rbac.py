"""RBAC of charts/berth: least privilege, no wildcards, cluster-wide and namespaced modes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart.helm import (
    FULLNAME,
    NAMESPACE,
    Objects,
    of_kind,
    one,
    operator_container,
    render,
    render_error,
)

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)

#: Everything the operator does in a namespace it watches (docs/operator.md).
NAMESPACED: set[Rule] = {
    *(("berth.dev", "berttrainings", v) for v in ("list", "watch", "patch", "delete")),
    ("berth.dev", "berttrainings/status", "patch"),
    *(("", "pods", v) for v in ("get", "list", "watch", "create", "delete")),
    *(("", "services", v) for v in ("get", "create", "delete")),
    *(("", "configmaps", v) for v in ("get", "create", "patch")),
    ("", "events", "create"),
    *(("batch", "jobs", v) for v in ("get", "list", "watch", "create", "delete")),
    *(("apps", "deployments", v) for v in ("get", "create", "delete")),
    *(("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "delete")),
}
#: The cluster-scoped reads of both modes: kopf's resource discovery, and the nodes of workers
#: that are not Ready (lost ones?).
CRDS: set[Rule] = {
    *(("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")),
    ("", "nodes", "get"),
}
NAMESPACES: set[Rule] = {("", "namespaces", v) for v in ("list", "watch")}
#: The Role (and RoleBinding) of leader election, in the release namespace.
LEADER_ELECTION = f"{FULLNAME}-leader-election"

VALUE_MATRIX = [
    {},
    {"replicaCount": 2},
    {"watchNamespaces": ["ml"]},
    {"watchNamespaces": ["ml", "nlp"], "replicaCount": 2},
]


def flatten(role: dict[str, Any]) -> set[Rule]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def roles(objects: Objects) -> Objects:
    return of_kind(objects, "ClusterRole") + of_kind(objects, "Role")


def watched(objects: Objects, kind: str) -> Objects:
    """The Roles or RoleBindings of the watched namespaces (not leader election's)."""
    return [o for o in of_kind(objects, kind) if o["metadata"]["name"] != LEADER_ELECTION]


@pytest.mark.parametrize("values", VALUE_MATRIX)
def test_no_wildcards_and_nothing_dangerous(values: dict) -> None:
    for role in roles(render(values)):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"], rule)
                assert not any("*" in item for item in rule[key]), (role["metadata"], rule)
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule or rule["resources"] == ["leases"]
        granted = flatten(role)
        assert not {r for r in granted if r[1] in {"secrets", "serviceaccounts/token"}}
        assert not {r for r in granted if r[2] in {"escalate", "bind", "impersonate", "*"}}
        assert not {r for r in granted if r[0] in {"rbac.authorization.k8s.io"}}


def test_cluster_wide_mode_grants_exactly_what_the_operator_uses() -> None:
    objects = render()
    assert not watched(objects, "Role") and not watched(objects, "RoleBinding")
    assert flatten(one(objects, "ClusterRole")) == NAMESPACED | CRDS
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("values", VALUE_MATRIX)
def test_leader_election_may_use_only_its_own_lease(values: dict) -> None:
    """A Role in the release namespace: create a Lease (a create cannot be limited to a name),
    get and update only the chart's, whose name the operator is given."""
    objects = render(values)
    (role,) = [r for r in of_kind(objects, "Role") if r["metadata"]["name"] == LEADER_ELECTION]
    assert role["metadata"]["namespace"] == NAMESPACE
    leases = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    assert role["rules"] == [
        {**leases, "verbs": ["create"]},
        {**leases, "resourceNames": [FULLNAME], "verbs": ["get", "update"]},
    ]
    assert f"--leader-election-id={FULLNAME}" in operator_container(objects)["args"]
    (binding,) = [
        b for b in of_kind(objects, "RoleBinding") if b["metadata"]["name"] == LEADER_ELECTION
    ]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == LEADER_ELECTION
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    others = [r for r in roles(objects) if r is not role]
    assert not {r for other in others for r in flatten(other) if r[1] == "leases"}


def test_namespaced_mode_has_a_role_per_watched_namespace() -> None:
    objects = render({"watchNamespaces": ["ml", "nlp"]})
    assert [r["metadata"]["namespace"] for r in watched(objects, "Role")] == ["ml", "nlp"]
    for role in watched(objects, "Role"):
        assert role["metadata"]["name"] == FULLNAME
        assert flatten(role) == NAMESPACED
    bindings = watched(objects, "RoleBinding")
    assert [b["metadata"]["namespace"] for b in bindings] == ["ml", "nlp"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    # Cluster-wide, only the reads kopf needs to find CRDs and follow the watched namespaces.
    assert flatten(one(objects, "ClusterRole")) == CRDS | NAMESPACES


def test_rbac_create_false_renders_no_rbac() -> None:
    objects = render({"rbac": {"create": False}, "watchNamespaces": ["ml"]})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not of_kind(objects, kind)


@pytest.mark.parametrize("watch", [[], ["ml", "nlp"]])
def test_tpu_credentials_secrets_grant_get_on_those_names_only(watch: list[str]) -> None:
    objects = render({"rbac": {"tpuCredentialsSecrets": ["tpu-key"]}, "watchNamespaces": watch})
    holders = watched(objects, "Role") if watch else of_kind(objects, "ClusterRole")
    assert len(holders) == max(1, len(watch))
    for role in holders:
        secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
        assert secret_rules == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["tpu-key"],
                "verbs": ["get"],
            }
        ]
    if watch:  # the cluster-wide part never reads secrets
        assert not {r for r in flatten(one(objects, "ClusterRole")) if r[1] == "secrets"}


def test_tpu_credentials_secrets_must_be_names() -> None:
    assert "/rbac/tpuCredentialsSecrets/0" in render_error(
        {"rbac": {"tpuCredentialsSecrets": ["*"]}}
    )


KUEUE_NAMESPACED: set[Rule] = {
    *(
        ("kueue.x-k8s.io", "workloads", v)
        for v in ("list", "watch", "create", "patch", "delete")  # delete: a replaced Workload
    ),
    ("kueue.x-k8s.io", "workloads/status", "patch"),
}
KUEUE_CLUSTER: set[Rule] = {
    ("kueue.x-k8s.io", r, "get") for r in ("resourceflavors", "workloadpriorityclasses")
}


@pytest.mark.parametrize("watch", [[], ["ml", "nlp"]])
def test_kueue_grants_workloads_only_when_enabled(watch: list[str]) -> None:
    plain = render({"watchNamespaces": watch})
    assert not {r for role in roles(plain) for r in flatten(role) if r[0] == "kueue.x-k8s.io"}
    objects = render({"watchNamespaces": watch, "kueue": {"enabled": True}})
    cluster = flatten(one(objects, "ClusterRole"))
    if watch:
        assert cluster == CRDS | NAMESPACES | KUEUE_CLUSTER
        for role in watched(objects, "Role"):
            assert flatten(role) == NAMESPACED | KUEUE_NAMESPACED
    else:
        assert cluster == NAMESPACED | CRDS | KUEUE_NAMESPACED | KUEUE_CLUSTER


@pytest.mark.parametrize("watch", [[], ["ml"]])
def test_network_policy_off_grants_no_network_policies(watch: list[str]) -> None:
    objects = render({"watchNamespaces": watch, "networkPolicy": {"enabled": False}})
    granted = {r for role in roles(objects) for r in flatten(role)}
    assert NAMESPACED - granted == {
        ("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "delete")
    }
