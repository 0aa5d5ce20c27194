"""The objects `helm template` makes of charts/berth: kinds, labels, the operator Deployment."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.unit.chart.helm import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    of_kind,
    one,
    operator_container,
    render,
    render_error,
)

#: The operator pods' NetworkPolicyPeer the chart passes as --metrics-peer.
OPERATOR_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
    "podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "berth", "app.kubernetes.io/instance": RELEASE}
    },
}
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def test_defaults_render_the_cluster_wide_operator() -> None:
    kinds = sorted(obj["kind"] for obj in render())
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"]
        + ["Role", "RoleBinding", "PodDisruptionBudget"]  # leader election of 2 replicas
        + ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 2
    )


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["ml", "nlp"], "replicaCount": 2},
        {"networkPolicy": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}},
    ],
    ids=["defaults", "namespaced-replicas", "netpol-servicemonitor"],
)
def test_every_object_carries_the_recommended_labels(values: dict) -> None:
    for obj in render(values):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "berth"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == APP_VERSION
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "berth"
        assert labels["helm.sh/chart"].startswith("berth-")
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"], obj["metadata"]


def test_deployment_runs_berth_operator_cluster_wide() -> None:
    deployment = one(render(), "Deployment")
    assert deployment["metadata"]["name"] == FULLNAME
    assert deployment["spec"]["replicas"] == 2
    # Leader election makes old and new pods overlapping harmless: a standby first.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "berth", "app.kubernetes.io/instance": RELEASE}
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = operator_container(render())
    assert container["image"] == f"berth-operator:{APP_VERSION}"
    assert container["command"] == ["berth-operator"]
    assert container["args"] == [
        "--all-namespaces",
        f"--default-image=berth-trainer:{APP_VERSION}",
        "--metrics-port=8000",
        "--liveness-port=8080",
        "--progress-interval=5",
        "--reconcile-interval=2",
        "--log-level=info",
        "--leader-elect",
        f"--leader-election-id={FULLNAME}",
        "--leader-election-lease-duration=15",
        "--leader-election-renew-deadline=10",
        "--leader-election-retry-period=2",
        "--pod-policy=restricted",
        f"--metrics-peer={json.dumps(OPERATOR_PEER, separators=(',', ':'), sort_keys=True)}",
    ]
    # The Lease's namespace and the holder's name come from the downward API.
    assert container["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME
    assert one(render(), "ServiceAccount")["metadata"]["name"] == FULLNAME


def test_probes_hit_kopfs_liveness_endpoint() -> None:
    container = operator_container(render({"probes": {"port": 9999}}))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8000, "healthz": 9999}
    assert "--liveness-port=9999" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
        assert container[probe]["periodSeconds"] > 0


def test_values_reach_the_command_line() -> None:
    container = operator_container(
        render(
            {
                "watchNamespaces": ["ml", "nlp"],
                "logLevel": "debug",
                "progressInterval": 1.5,
                "image": {"repository": "registry.example/berth-operator", "tag": "1.2.3"},
                "trainer": {"image": {"repository": "registry.example/berth-trainer"}},
            }
        )
    )
    assert container["image"] == "registry.example/berth-operator:1.2.3"
    assert container["args"][:3] == [
        "--namespace=ml",
        "--namespace=nlp",
        f"--default-image=registry.example/berth-trainer:{APP_VERSION}",
    ]
    assert "--all-namespaces" not in container["args"]
    assert "--log-level=debug" in container["args"]
    assert "--progress-interval=1.5" in container["args"]


def test_pod_scheduling_and_pull_secrets_pass_through() -> None:
    values = {
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "resources": {"requests": {"cpu": "1"}},
        "podAnnotations": {"a": "b"},
        "podLabels": {"team": "nlp"},
        "priorityClassName": "system-cluster-critical",
    }
    pod = one(render(values), "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "system"}
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == {"nodeAffinity": {}}
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "1"
    assert pod["metadata"]["annotations"] == {"a": "b"}
    assert pod["metadata"]["labels"]["team"] == "nlp"


def test_default_resources_are_set() -> None:
    resources = operator_container(render())["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_metrics_service_selects_the_operator_pod() -> None:
    objects = render()
    service = one(objects, "Service")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_metrics_disabled_drops_the_service_and_the_port() -> None:
    objects = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert not of_kind(objects, "Service") and not of_kind(objects, "ServiceMonitor")
    container = operator_container(objects)
    assert "--metrics-port=0" in container["args"]
    assert [port["name"] for port in container["ports"]] == ["healthz"]


def test_service_monitor_scrapes_the_metrics_port() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    monitor = one(render(values), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE


def metrics_peers(args: list[str]) -> list[dict]:
    return [json.loads(a.split("=", 1)[1]) for a in args if a.startswith("--metrics-peer=")]


@pytest.mark.parametrize("watch", [[], ["ml", "nlp"]])
def test_operator_isolates_workers_and_alone_reads_their_metrics(watch: list[str]) -> None:
    """The operator makes each training's NetworkPolicy (the chart makes none) and is told
    its own pods' peer: the release namespace and the selector labels of its Deployment."""
    objects = render({"watchNamespaces": watch})
    assert not of_kind(objects, "NetworkPolicy")
    args = operator_container(objects)["args"]
    assert "--no-network-policy" not in args
    assert metrics_peers(args) == [OPERATOR_PEER]
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert OPERATOR_PEER["podSelector"]["matchLabels"] == selector


def test_metrics_from_adds_peers_after_the_operator() -> None:
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    args = operator_container(render({"networkPolicy": {"metricsFrom": [prometheus, block]}}))[
        "args"
    ]
    assert metrics_peers(args) == [OPERATOR_PEER, prometheus, block]


def test_network_policy_off_tells_the_operator() -> None:
    args = operator_container(render({"networkPolicy": {"enabled": False}}))["args"]
    assert "--no-network-policy" in args
    assert not metrics_peers(args)


@pytest.mark.parametrize(("replicas", "budget"), [(1, False), (2, True), (3, True)])
def test_several_replicas_get_a_disruption_budget(replicas: int, budget: bool) -> None:
    objects = render({"replicaCount": replicas})
    assert one(objects, "Deployment")["spec"]["replicas"] == replicas
    assert "--leader-elect" in operator_container(objects)["args"]  # one replica too: upgrades
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert bool(budgets) is budget
    if budget:
        selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
        assert budgets[0]["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}


def test_replicas_prefer_different_nodes_unless_affinity_is_given() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = one(render(), "Deployment")["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": selector}
    given = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    assert (
        one(render({"affinity": given}), "Deployment")["spec"]["template"]["spec"]["affinity"]
        == given
    )


def test_leader_election_timings_reach_the_flags_and_are_checked() -> None:
    values = {"leaderElection": {"leaseDuration": 30, "renewDeadline": 20, "retryPeriod": 4}}
    args = operator_container(render(values))["args"]
    assert {
        "--leader-election-lease-duration=30",
        "--leader-election-renew-deadline=20",
        "--leader-election-retry-period=4",
    } <= set(args)
    assert "leaseDuration > renewDeadline > retryPeriod" in render_error(
        {"leaderElection": {"renewDeadline": 15}}
    )


def test_existing_service_account_is_used_without_creating_one() -> None:
    objects = render({"serviceAccount": {"create": False, "name": "ops"}})
    assert not of_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"


def test_fullname_override() -> None:
    objects = render({"fullnameOverride": "trainer-ops"})
    assert {obj["metadata"]["name"] for obj in objects} == {
        "trainer-ops",
        "trainer-ops-leader-election",
        "trainer-ops-metrics",
        "trainer-ops-pod-baseline",
        "trainer-ops-pod-restricted",
    }


@pytest.mark.parametrize("enabled", [False, True])
def test_kueue_value_passes_the_flag(enabled: bool) -> None:
    args = operator_container(render({"kueue": {"enabled": enabled}}))["args"]
    assert ("--kueue" in args) is enabled
