"""Values `podPolicy` → the ValidatingAdmissionPolicies, their bindings and the operator's flags."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart.helm import FULLNAME, of_kind, operator_container, render, render_error

KEY = "kubernetes.io/metadata.name"
BASELINE, RESTRICTED = f"{FULLNAME}-pod-baseline", f"{FULLNAME}-pod-restricted"


def _selectors(values: dict[str, Any]) -> dict[str, Any]:
    """Policy name → its binding's namespaceSelector, for the policies rendered."""
    objects = render({"podPolicy": values})
    policies = {p["metadata"]["name"] for p in of_kind(objects, "ValidatingAdmissionPolicy")}
    bindings = of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert {b["spec"]["policyName"] for b in bindings} == policies
    for binding in bindings:
        assert binding["spec"]["validationActions"] == ["Deny"]
    return {
        b["spec"]["policyName"]: b["spec"]["matchResources"]["namespaceSelector"] for b in bindings
    }


def _names(operator: str, namespaces: list[str]) -> dict[str, Any]:
    return {"matchExpressions": [{"key": KEY, "operator": operator, "values": namespaces}]}


@pytest.mark.parametrize(
    ("values", "selectors"),
    [
        ({}, {BASELINE: {}, RESTRICTED: {}}),
        ({"level": "baseline"}, {BASELINE: {}}),
        ({"level": "privileged"}, {}),
        (
            {"namespaces": {"lab": "privileged", "ci": "baseline"}},
            {BASELINE: _names("NotIn", ["lab"]), RESTRICTED: _names("NotIn", ["ci", "lab"])},
        ),
        (
            {"level": "privileged", "namespaces": {"secure": "restricted", "mid": "baseline"}},
            {BASELINE: _names("In", ["mid", "secure"]), RESTRICTED: _names("In", ["secure"])},
        ),
        ({"level": "privileged", "namespaces": {"lab": "privileged"}}, {}),
    ],
    ids=[
        "default-restricted-everywhere",
        "baseline-everywhere",
        "privileged-no-admission-policy",
        "restricted-widened-per-namespace",
        "privileged-narrowed-per-namespace",
        "privileged-everywhere",
    ],
)
def test_bindings_cover_exactly_the_namespaces_at_their_level(
    values: dict[str, Any], selectors: dict[str, Any]
) -> None:
    assert _selectors(values) == selectors


def test_the_operator_gets_the_same_levels() -> None:
    args = operator_container(
        render({"podPolicy": {"level": "baseline", "namespaces": {"lab": "privileged"}}})
    )["args"]
    assert "--pod-policy=baseline" in args
    assert "--pod-policy-namespace=lab=privileged" in args
    assert "--pod-policy=restricted" in operator_container(render())["args"]


def test_every_refusal_names_the_field_and_spares_unchanged_templates() -> None:
    for policy in of_kind(render(), "ValidatingAdmissionPolicy"):
        spec = policy["spec"]
        assert spec["failurePolicy"] == "Fail"
        assert spec["matchConstraints"]["resourceRules"][0]["resources"] == ["berttrainings"]
        assert "oldObject.spec.podTemplate" in spec["matchConditions"][0]["expression"]
        for validation in spec["validations"]:
            assert validation["message"].startswith("spec.podTemplate.spec."), validation
            # A container's path (variables.containers) starts the same way.
            named = validation.get("messageExpression", "'spec.podTemplate.spec.")
            assert "'spec.podTemplate.spec." in named or "c.path + " in named, named


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"podPolicy": {"level": "root"}}, "/podPolicy/level"),
        ({"podPolicy": {"namespaces": {"lab": "open"}}}, "/podPolicy/namespaces/lab"),
        ({"podPolicy": {"namespaces": {"Lab_1": "privileged"}}}, "Lab_1"),
        ({"podPolicy": {"exempt": ["lab"]}}, "exempt"),
    ],
    ids=["unknown-level", "unknown-namespace-level", "not-a-namespace-name", "unknown-key"],
)
def test_schema_rejects_bad_pod_policy_values(values: dict[str, Any], error: str) -> None:
    assert error in render_error(values)
