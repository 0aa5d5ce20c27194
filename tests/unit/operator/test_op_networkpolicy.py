"""Each training's NetworkPolicy (berth_operator.networkpolicy) and the settings behind it."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from berth_operator.builders import METRICS_PORT, TF_PORT, build_worker_pod
from berth_operator.networkpolicy import build_network_policy
from berth_operator.settings import parse_settings
from tests.unit.operator.factories import make_training

OPERATOR = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "berth-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "berth"}},
}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}
HOST = {"ipBlock": {"cidr": "10.244.0.1/32"}}


def selects(selector: dict[str, Any], pod: dict[str, Any]) -> bool:
    """A matchLabels-only label selector against a pod (the policy uses nothing else)."""
    assert set(selector) == {"matchLabels"}, selector
    return selector["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_policy_selects_exactly_this_trainings_workers() -> None:
    training = make_training("bert", "ml")
    policy = build_network_policy(training, [OPERATOR])
    assert policy["metadata"] == {
        "name": "bert",
        "namespace": "ml",
        "labels": policy["metadata"]["labels"],
    }
    assert policy["metadata"]["labels"]["berth.dev/training"] == "bert"
    selector = policy["spec"]["podSelector"]
    for index, restart in ((0, 0), (2, 5)):
        assert selects(selector, build_worker_pod(training, index, "img", restart))
    other = make_training("bert-2", "ml")  # a prefix-sharing name is another training
    assert not selects(selector, build_worker_pod(other, 0, "img", 0))
    # Ingress only: workers still read data and write checkpoints.
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_tf_port_only_from_the_same_trainings_workers() -> None:
    training, other = make_training("bert", "ml"), make_training("gpt", "ml")
    tf_rule = build_network_policy(training, [OPERATOR])["spec"]["ingress"][0]
    assert tf_rule["ports"] == [{"protocol": "TCP", "port": TF_PORT}]
    (peer,) = tf_rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector: the policy's namespace only
    assert selects(peer["podSelector"], build_worker_pod(training, 1, "img", 0))
    assert not selects(peer["podSelector"], build_worker_pod(other, 1, "img", 0))


@pytest.mark.parametrize(
    ("peers", "metrics_from"),
    [
        ([OPERATOR], [OPERATOR]),
        ([OPERATOR, PROMETHEUS, HOST], [OPERATOR, PROMETHEUS, HOST]),
        # A rule without `from` admits every source: with no peer the port has no rule at all.
        ([], None),
    ],
    ids=["operator", "operator-prometheus-host", "none"],
)
def test_metrics_port_only_from_the_given_peers(
    peers: list[dict[str, Any]], metrics_from: list[dict[str, Any]] | None
) -> None:
    ingress = build_network_policy(make_training(), peers)["spec"]["ingress"]
    assert all(rule.get("from") for rule in ingress)
    ports = [rule["ports"] for rule in ingress]
    if metrics_from is None:
        assert ports == [[{"protocol": "TCP", "port": TF_PORT}]]
    else:
        assert ports[1] == [{"protocol": "TCP", "port": METRICS_PORT}]
        assert ingress[1]["from"] == metrics_from


def test_network_policy_is_on_by_default_and_can_be_turned_off() -> None:
    assert parse_settings([], env={}).network_policy
    assert not parse_settings(["--no-network-policy"], env={}).network_policy
    assert not parse_settings([], env={"BERTH_NETWORK_POLICY": "false"}).network_policy


def test_metrics_peers_from_flags_or_env() -> None:
    flags = ["--metrics-peer", '{"ipBlock": {"cidr": "10.244.0.1/32"}}']
    flags += ["--metrics-peer", '{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}']
    assert parse_settings(flags, env={}).metrics_peers == (HOST, PROMETHEUS)
    env = {"BERTH_METRICS_PEERS": '[{"ipBlock": {"cidr": "10.244.0.1/32"}}]'}
    assert parse_settings([], env=env).metrics_peers == (HOST,)
    assert parse_settings(flags[:2], env=env).metrics_peers == (HOST,)  # flags win
    assert parse_settings([], env={}).metrics_peers == ()


@pytest.mark.parametrize(
    "value",
    ["{}", "[]", "not json", '{"podSelectors": {}}', '"ipBlock"'],
    ids=["empty", "list", "not-json", "unknown-field", "string"],
)
def test_a_bad_metrics_peer_is_refused_at_start(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--metrics-peer", value], env={})
    assert "not a NetworkPolicyPeer" in capsys.readouterr().err


@pytest.mark.parametrize("value", ['{"ipBlock": {}}', "[{}]", "[nope"])
def test_a_bad_metrics_peers_env_is_refused(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_settings([], env={"BERTH_METRICS_PEERS": value})
