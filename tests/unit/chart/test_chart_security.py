"""The operator pod is locked down by default: non-root, read-only root, no capabilities."""

from __future__ import annotations

import pytest

from tests.unit.chart.helm import one, operator_container, render


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["ml"], "replicaCount": 2}])
def test_pod_security_context(values: dict) -> None:
    pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0
    assert context["runAsGroup"] > 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_container_security_context() -> None:
    context = operator_container(render())["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "add" not in context["capabilities"]


def test_read_only_root_gets_a_scratch_tmp() -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in operator_container(objects)["volumeMounts"]}
    assert mounts == {"tmp": "/tmp"}
    assert [v["name"] for v in pod["volumes"]] == ["tmp"] and "emptyDir" in pod["volumes"][0]


def test_no_host_access() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert not [v for v in pod["volumes"] if "hostPath" in v]


def test_no_service_link_variables() -> None:
    """A release named `berth` has a Service `berth-metrics`: its Docker-link variable
    BERTH_METRICS_PORT=tcp://... would shadow the operator's BERTH_METRICS_PORT setting (this
    crashed the operator pod on the real node)."""
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
