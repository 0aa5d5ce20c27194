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

from berth_operator import labels
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
    meta = training["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    workers = {"matchLabels": {labels.TRAINING: name, labels.ROLE: labels.ROLE_WORKER}}
    ingress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "TCP", "port": TF_PORT}], "from": [{"podSelector": workers}]}
    ]
    if metrics_peers:
        ingress.append(
            {
                "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                "from": [dict(peer) for peer in metrics_peers],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(name),
            "namespace": namespace,
            "labels": labels.common_labels(name),
        },
        "spec": {"podSelector": workers, "policyTypes": ["Ingress"], "ingress": ingress},
    }
