"""The operator's pod policy on the real API server: what admission cannot see fails the training
before any pod exists; a namespace the admin widened gets its pods."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.conftest import delete_namespace, new_namespace
from tests.integration.conftest import GROUP, PLURAL, VERSION, Operator, Trainings, manifest
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

#: Tolerates every taint (NoExecute ones too): the chart's admission policies let it through,
#: Pod Security has no rule for it, and the operator's policy refuses it.
TOLERATE_ALL = {"spec": {"tolerations": [{"operator": "Exists"}]}}
FIELD = "spec.podTemplate.spec.tolerations[0]"


@pytest.fixture
def widened(api: client.ApiClient) -> Iterator[str]:
    """A second namespace for the operator, widened to `privileged` by its flag."""
    name = new_namespace(api)
    yield name
    delete_namespace(api, name)


def test_refused_pod_fails_the_training_with_no_pod_and_a_widened_namespace_runs_it(
    api: client.ApiClient,
    operator_factory: Callable[..., Operator],
    trainings: Trainings,
    widened: str,
) -> None:
    operator = operator_factory(
        "--namespace", widened, "--pod-policy-namespace", f"{widened}=privileged"
    )
    trainings.create(manifest("tolerant", workers=2, podTemplate=TOLERATE_ALL))
    elsewhere = Trainings(api, widened)
    elsewhere.create(manifest("tolerant", workers=2, podTemplate=TOLERATE_ALL))
    try:
        wait_for(lambda: len(elsewhere.pods("tolerant")) == 2, timeout=30, what="widened pods")
        assert elsewhere.pods("tolerant")[0].spec.tolerations[0].operator == "Exists"

        status = trainings.wait_phase("tolerant", "Failed")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "PodPolicyViolation"
        assert f"{FIELD}: must name a key" in failed["message"]
        warnings = [e for e in trainings.events("tolerant") if e.type == "Warning"]
        assert [e.reason for e in warnings] == ["PodPolicyViolation"]
        assert FIELD in warnings[0].message
        assert trainings.pods("tolerant", alive_only=False) == []
        # Every pod the operator ever created is the widened namespace's.
        assert operator.metric("berth_operator_pods_created_total") == 2
    finally:
        elsewhere.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, widened, PLURAL)
