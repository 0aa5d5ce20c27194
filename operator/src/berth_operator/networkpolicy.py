"""The NetworkPolicy `<name>` that isolates one training's workers.

TensorFlow's gRPC server (the TF port) has no authentication: it runs whatever graph it is sent.
Each training therefore gets its own policy selecting its workers: the TF port is reachable
only from the same training's workers, the metrics port only from the given peers (the
operator's pods, and whatever an admin adds, e.g. Prometheus), and nothing else reaches the
workers. Egress stays open (workers read datasets and write checkpoints).

    >>> policy = build_network_policy({"metadata": {"name": "bert", "namespace": "ml"}}, [])
    >>> [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    [2222]

A rule with no `from` would admit every source, so with no metrics peers the metrics port gets
no rule at all: it is closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from berth_operator import labels, tensorboard
from berth_operator.builders import METRICS_PORT, TF_PORT

#: The fields of a NetworkPolicyPeer (networking.k8s.io/v1).
PEER_FIELDS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


def network_policy_name(name: str) -> str:
    """The policy is named after its training, like the headless Service."""
    return name


def validate_peer(peer: object) -> dict[str, Any]:
    """`peer` as a NetworkPolicyPeer, or ValueError: an empty peer or an unknown field would
    be refused by the API server on every training, long after the operator started."""
    if not isinstance(peer, dict) or not peer:
        raise ValueError(f"a NetworkPolicyPeer must be a non-empty object: {peer!r}")
    unknown = set(peer) - PEER_FIELDS
    if unknown:
        raise ValueError(
            f"unknown NetworkPolicyPeer field(s) {sorted(unknown)}; allowed: {sorted(PEER_FIELDS)}"
        )
    return peer


def build_network_policy(
    training: Mapping[str, Any], metrics_peers: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """NetworkPolicy `<name>`: ingress to the training's workers only on the TF port from its
    own workers and on the metrics port from `metrics_peers`; all other ingress denied."""
    name = training["metadata"]["name"]
    workers = {"matchLabels": {labels.TRAINING: name, labels.ROLE: labels.ROLE_WORKER}}
    tf_port = {"ports": [{"protocol": "TCP", "port": TF_PORT}], "from": [{"podSelector": workers}]}
    return _policy(training, network_policy_name(name), workers, [tf_port], metrics_peers)


def prepare_network_policy_name(name: str) -> str:
    """The prepare pods' policy is named after their Job, `<name>-prepare`."""
    return f"{name}-prepare"


def build_prepare_network_policy(
    training: Mapping[str, Any], metrics_peers: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """NetworkPolicy `<name>-prepare`: ingress to the training's data.prepare pods only on the
    metrics port from `metrics_peers` (the operator scrapes their progress there, as it scrapes
    worker 0); all other ingress denied. They serve nothing else.

    >>> policy = build_prepare_network_policy({"metadata": {"name": "b", "namespace": "ml"}}, [])
    >>> policy["spec"]["podSelector"]["matchLabels"]["berth.dev/role"], policy["spec"]["ingress"]
    ('prepare', [])
    """
    name = training["metadata"]["name"]
    selected = {"matchLabels": {labels.TRAINING: name, labels.ROLE: labels.ROLE_PREPARE}}
    return _policy(training, prepare_network_policy_name(name), selected, [], metrics_peers)


def _policy(
    training: Mapping[str, Any],
    policy_name: str,
    selected: dict[str, Any],
    ingress: list[dict[str, Any]],
    metrics_peers: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A policy selecting `selected` pods: `ingress`, plus the metrics port from the peers."""
    meta = training["metadata"]
    if metrics_peers:
        ingress = [
            *ingress,
            {
                "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                "from": [dict(peer) for peer in metrics_peers],
            },
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name,
            "namespace": meta["namespace"],
            "labels": labels.common_labels(meta["name"]),
        },
        "spec": {"podSelector": selected, "policyTypes": ["Ingress"], "ingress": ingress},
    }


#: The label the API server puts on every namespace: its name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def build_tensorboard_network_policy(training: Mapping[str, Any]) -> dict[str, Any]:
    """NetworkPolicy `<name>-tensorboard`: ingress to the training's TensorBoard pod only on
    TensorBoard's port and only from pods of the training's own namespace (`kubectl
    port-forward` enters the pod's network namespace on the node, no policy in its way); all
    other ingress denied. Egress stays open, as the workers' does: it reads gs:// like them.

    >>> policy = build_tensorboard_network_policy({"metadata": {"name": "b", "namespace": "ml"}})
    >>> policy["metadata"]["name"], policy["spec"]["ingress"][0]["ports"]
    ('b-tensorboard', [{'protocol': 'TCP', 'port': 6006}])
    """
    meta = training["metadata"]
    name = meta["name"]
    same_namespace = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: meta["namespace"]}}
    }
    rule = {"ports": [{"protocol": "TCP", "port": tensorboard.PORT}], "from": [same_namespace]}
    policy = _policy(
        training,
        tensorboard.tensorboard_name(name),
        {"matchLabels": tensorboard.selector(name)},
        [rule],
        [],
    )
    policy["metadata"]["labels"] = tensorboard.tensorboard_labels(name)
    return policy
