"""values.yaml is documented key by key, and values.schema.json rejects bad values clearly."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.unit.chart.helm import CHART, REPO, render, render_error

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
INSTALL_DOC = REPO / "docs" / "install.md"

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w-]*):")


def documented_paths() -> set[str]:
    """Dotted paths of keys with a `# --` comment (helm-docs style) right above them."""
    documented: set[str] = set()
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in VALUES_TEXT.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = KEY.match(line)
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            if any(c.startswith("# --") for c in comment):
                documented.add(".".join(key for _, key in stack))
        comment = []
    return documented


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in leaf_paths(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented() -> None:
    documented = documented_paths()
    for leaf in leaf_paths(VALUES):
        parts = leaf.split(".")
        ancestors = {".".join(parts[: i + 1]) for i in range(len(parts))}
        assert ancestors & documented, f"values.yaml: `{leaf}` has no `# --` comment"


def test_install_doc_lists_every_documented_value() -> None:
    table = INSTALL_DOC.read_text()
    missing = [path for path in sorted(documented_paths()) if f"`{path}`" not in table]
    assert not missing, f"docs/install.md values table lacks {missing}"


def schema_node(path: str) -> dict[str, Any]:
    node = SCHEMA
    for key in path.split("."):
        assert "properties" in node and key in node["properties"], f"schema lacks `{path}`"
        node = node["properties"][key]
    return node


def test_schema_describes_every_value_and_forbids_unknown_keys() -> None:
    for path in documented_paths():
        assert schema_node(path).get("description"), f"schema: `{path}` has no description"

    def walk(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"schema `{where}` is open"
            for key, child in node["properties"].items():
                walk(child, f"{where}.{key}".lstrip("."))

    walk(SCHEMA, "")


def test_defaults_pass_the_schema() -> None:
    assert render(VALUES)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 0}, "at '/replicaCount': minimum"),
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "at '/watchNamespaces/0'"),
        ({"watchNamespaces": ["ml", "ml"]}, "at '/watchNamespaces'"),
        ({"logLevel": "verbose"}, "at '/logLevel': value must be one of"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"image": {"tag": "has space"}}, "at '/image/tag'"),
        ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum"),
        ({"probes": {"port": 0}}, "at '/probes/port': minimum"),
        ({"progressInterval": 0}, "at '/progressInterval'"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
        ({"imagePullSecrets": ["regcred"]}, "at '/imagePullSecrets/0': got string, want object"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"networkPolicy": {"enable": True}}, "additional properties 'enable' not allowed"),
        (
            {"networkPolicy": {"metricsFrom": [{"podSelectors": {}}]}},
            "additional properties 'podSelectors' not allowed",
        ),
        ({"networkPolicy": {"metricsFrom": [{}]}}, "at '/networkPolicy/metricsFrom/0'"),
        ({"securityContext": "strict"}, "at '/securityContext': got string, want object"),
        ({"leaderElection": {"leaseDuration": 1.5}}, "at '/leaderElection/leaseDuration'"),
        ({"leaderElection": {"retryPeriod": 0}}, "at '/leaderElection/retryPeriod'"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(values: dict, message: str) -> None:
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error


def test_metrics_and_liveness_ports_must_differ() -> None:
    error = render_error({"metrics": {"port": 8080}, "probes": {"port": 8080}})
    assert "metrics.port and probes.port must differ" in error
