"""The chart's Cloud TPU tenancy values become operator flags that the operator reads back as the
same rules; the schema refuses what the operator would refuse at start-up."""

from __future__ import annotations

import pytest

from berth_operator.settings import parse_settings
from berth_operator.tpu.tenancy import TpuTenancy
from tests.unit.chart.helm import operator_container, render, render_error

SA = "tpu-vm@proj-a.iam.gserviceaccount.com"


def tenancy_of(values: dict) -> TpuTenancy:
    args = [a for a in operator_container(render(values))["args"] if a.startswith("--tpu-")]
    return parse_settings(args, env={}).tpu_tenancy


def test_default_allows_no_project() -> None:
    assert tenancy_of({}) == TpuTenancy()


def test_namespaces_and_credentials_reach_the_operator() -> None:
    values = {
        "tpu": {
            "namespaces": {
                "team-a": {"projects": ["proj-a", "proj-b"], "serviceAccount": SA},
                "*": {"projects": ["shared"]},
            },
            "requireCredentialsSecret": True,
        }
    }
    assert tenancy_of(values) == TpuTenancy(
        projects={"team-a": frozenset({"proj-a", "proj-b"}), "*": frozenset({"shared"})},
        service_accounts={"team-a": SA},
        require_credentials_secret=True,
    )


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"namespaces": {"Team_A": {"projects": ["p"]}}}, "invalid propertyName 'Team_A'"),
        ({"namespaces": {"a": {"projects": []}}}, "/tpu/namespaces/a/projects"),
        ({"namespaces": {"a": {"projects": ["p/../q"]}}}, "/tpu/namespaces/a/projects/0"),
        ({"namespaces": {"a": {"serviceAccount": SA}}}, "/tpu/namespaces/a"),  # no projects
        (
            {"namespaces": {"a": {"projects": ["p"], "serviceAccount": "me@gmail.com"}}},
            "/tpu/namespaces/a/serviceAccount",
        ),
        ({"requireCredentials": True}, "additional properties 'requireCredentials'"),
    ],
)
def test_schema_refuses_bad_rules(values: dict, where: str) -> None:
    error = render_error({"tpu": values})
    assert where in error, error
