"""Pod policy: securityContext merging, the checks on the merged worker pod, and the training
failing before any pod exists (issue: safe on a shared cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from berth_operator.builders import build_worker_pod
from berth_operator.podpolicy import Level, violations
from berth_operator.policy import reconcile
from berth_operator.settings import parse_settings
from tests.unit.operator.factories import T0, make_training

SIDECAR: dict[str, Any] = {"name": "sidecar", "image": "busybox"}
FETCH: dict[str, Any] = {"name": "fetch", "image": "busybox"}


def _pod(template: dict[str, Any]) -> dict[str, Any]:
    """Worker 0 of a training with `template` as its podTemplate.spec."""
    training = make_training().with_spec(podTemplate={"spec": template})
    return build_worker_pod(training, 0, "img", restart=0)


def _effective(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext") or {}
    return own[field] if field in own else pod["spec"]["securityContext"].get(field)


def _sidecar(**context: Any) -> dict[str, Any]:
    return {"containers": [{**SIDECAR, "securityContext": context}]}


def test_a_template_setting_only_fs_group_keeps_every_default_on_every_container() -> None:
    pod = _pod(
        {"securityContext": {"fsGroup": 2000}, "containers": [SIDECAR], "initContainers": [FETCH]}
    )
    assert pod["spec"]["securityContext"]["fsGroup"] == 2000
    containers = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    assert [c["name"] for c in containers] == ["fetch", "trainer", "sidecar"]
    for container in containers:
        assert _effective(pod, container, "runAsNonRoot") is True
        assert _effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}
        assert _effective(pod, container, "allowPrivilegeEscalation") is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert violations(pod, Level.RESTRICTED) == []


def test_template_security_fields_win_one_by_one() -> None:
    pod = _pod(
        {
            "securityContext": {"runAsUser": 1000, "supplementalGroups": [3000]},
            "containers": [
                {
                    "name": "trainer",
                    "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
                }
            ],
        }
    )
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
        "supplementalGroups": [3000],
    }
    assert pod["spec"]["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    }
    assert violations(pod, Level.RESTRICTED) == []


T = "spec.podTemplate.spec"

#: (case, podTemplate.spec, lowest level that allows it, the field the violation names).
HOSTILE: list[tuple[str, dict[str, Any], Level, str]] = [
    ("hostNetwork", {"hostNetwork": True}, Level.PRIVILEGED, f"{T}.hostNetwork"),
    ("hostPID", {"hostPID": True}, Level.PRIVILEGED, f"{T}.hostPID"),
    ("hostIPC", {"hostIPC": True}, Level.PRIVILEGED, f"{T}.hostIPC"),
    ("nodeName", {"nodeName": "node-1"}, Level.PRIVILEGED, f"{T}.nodeName"),
    (
        "toleration-of-every-taint",
        {"tolerations": [{"key": "a", "operator": "Exists"}, {"operator": "Exists"}]},
        Level.PRIVILEGED,
        f"{T}.tolerations[1]",
    ),
    (
        "hostPath",
        {"volumes": [{"name": "data", "hostPath": {"path": "/"}}]},
        Level.PRIVILEGED,
        f"{T}.volumes[name=data].hostPath",
    ),
    (
        "privileged-sidecar",
        _sidecar(privileged=True),
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].securityContext.privileged",
    ),
    (
        "privileged-trainer",
        {"containers": [{"name": "trainer", "securityContext": {"privileged": True}}]},
        Level.PRIVILEGED,
        f"{T}.containers[name=trainer].securityContext.privileged",
    ),
    (
        "privileged-init-container",
        {"initContainers": [{**FETCH, "securityContext": {"privileged": True}}]},
        Level.PRIVILEGED,
        f"{T}.initContainers[name=fetch].securityContext.privileged",
    ),
    (
        "capability-sys-admin",
        _sidecar(capabilities={"add": ["SYS_ADMIN"]}),
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].securityContext.capabilities.add",
    ),
    (
        "capability-chown",
        _sidecar(capabilities={"add": ["CHOWN"]}),
        Level.BASELINE,
        f"{T}.containers[name=sidecar].securityContext.capabilities.add",
    ),
    (
        "capabilities-not-dropped",
        _sidecar(capabilities={"drop": ["NET_RAW"]}),
        Level.BASELINE,
        f"{T}.containers[name=sidecar].securityContext.capabilities.drop",
    ),
    (
        "hostPort",
        {"containers": [{**SIDECAR, "ports": [{"containerPort": 80, "hostPort": 80}]}]},
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].ports[0].hostPort",
    ),
    (
        "procMount",
        _sidecar(procMount="Unmasked"),
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].securityContext.procMount",
    ),
    (
        "unsafe-sysctl",
        {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
        Level.PRIVILEGED,
        f"{T}.securityContext.sysctls[0]",
    ),
    (
        "seccomp-unconfined",
        {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        Level.PRIVILEGED,
        f"{T}.securityContext.seccompProfile.type",
    ),
    (
        "apparmor-unconfined",
        _sidecar(appArmorProfile={"type": "Unconfined"}),
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].securityContext.appArmorProfile.type",
    ),
    (
        "selinux-type",
        _sidecar(seLinuxOptions={"type": "spc_t"}),
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].securityContext.seLinuxOptions.type",
    ),
    (
        "windows-host-process",
        _sidecar(windowsOptions={"hostProcess": True}),
        Level.PRIVILEGED,
        f"{T}.containers[name=sidecar].securityContext.windowsOptions.hostProcess",
    ),
    (
        "run-as-root-pod",
        {"securityContext": {"runAsUser": 0}},
        Level.BASELINE,
        f"{T}.securityContext.runAsUser",
    ),
    (
        "run-as-root-container",
        _sidecar(runAsUser=0),
        Level.BASELINE,
        f"{T}.containers[name=sidecar].securityContext.runAsUser",
    ),
    (
        "run-as-non-root-false",
        {"securityContext": {"runAsNonRoot": False}},
        Level.BASELINE,
        f"{T}.securityContext.runAsNonRoot",
    ),
    (
        "privilege-escalation",
        _sidecar(allowPrivilegeEscalation=True),
        Level.BASELINE,
        f"{T}.containers[name=sidecar].securityContext.allowPrivilegeEscalation",
    ),
    (
        "nfs-volume",
        {"volumes": [{"name": "share", "nfs": {"server": "nfs", "path": "/"}}]},
        Level.BASELINE,
        f"{T}.volumes[name=share].nfs",
    ),
]


@pytest.mark.parametrize(
    ("template", "allowed_at", "field"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_each_hostile_field_is_refused_by_name_up_to_the_level_that_allows_it(
    template: dict[str, Any], allowed_at: Level, field: str
) -> None:
    pod = _pod(template)
    for level in Level:
        found = violations(pod, level)
        if level in (allowed_at, Level.PRIVILEGED):
            assert found == [], level
            if level == allowed_at:
                break
        else:
            assert [v.split(": ")[0] for v in found] == [field], level


def test_what_stays_allowed_under_restricted() -> None:
    """A pod-creating tenant's ordinary choices: a ServiceAccount, Secrets, a PVC, GPUs on a
    tainted pool, a Localhost seccomp profile, safe sysctls."""
    pod = _pod(
        {
            "serviceAccountName": "trainer",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}}],
            "securityContext": {
                "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}],
                "seccompProfile": {"type": "Localhost", "localhostProfile": "tf.json"},
            },
            "containers": [
                {"name": "trainer", "envFrom": [{"secretRef": {"name": "hf-token"}}]},
                {**SIDECAR, "securityContext": {"runAsUser": 1000}},
            ],
        }
    )
    assert violations(pod, Level.RESTRICTED) == []


def test_apparmor_annotation_names_its_key() -> None:
    training = make_training().with_spec(
        podTemplate={
            "metadata": {
                "annotations": {
                    "container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"
                }
            }
        }
    )
    pod = build_worker_pod(training, 0, "img", restart=0)
    assert [v.split(": ")[0] for v in violations(pod, Level.BASELINE)] == [
        "spec.podTemplate.metadata.annotations[container.apparmor.security.beta.kubernetes.io/trainer]"
    ]


def test_a_refused_training_fails_before_any_pod_or_workload() -> None:
    training = make_training().with_spec(
        podTemplate={"spec": {"tolerations": [{"operator": "Exists"}], "hostPID": True}}
    )
    plan = reconcile(training, [], T0)
    assert plan.create == [] and not plan.create_workload
    assert plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "PodPolicyViolation"
    assert f"{T}.hostPID" in failed["message"] and f"{T}.tolerations[0]" in failed["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "PodPolicyViolation")]
    assert plan.events[0].message == failed["message"]
    widened = reconcile(training, [], T0, pod_policy=Level.PRIVILEGED)
    assert widened.create == [0, 1, 2] and widened.status["phase"] == "Starting"


def test_settings_pod_policy_per_namespace() -> None:
    assert parse_settings([], env={}).pod_policy_for("any") == Level.RESTRICTED
    env = {"BERTH_POD_POLICY": "baseline", "BERTH_POD_POLICY_NAMESPACES": "ci=restricted,lab=x"}
    settings = parse_settings(["--pod-policy-namespace", "lab=privileged"], env=env)
    # The flags replace the environment's list, as every repeatable flag does.
    assert [settings.pod_policy_for(ns) for ns in ("lab", "ci", "other")] == [
        Level.PRIVILEGED,
        Level.BASELINE,
        Level.BASELINE,
    ]
    env["BERTH_POD_POLICY_NAMESPACES"] = "ci=restricted"
    assert parse_settings([], env=env).pod_policy_for("ci") == Level.RESTRICTED
    with pytest.raises(SystemExit):
        parse_settings(["--pod-policy-namespace", "lab=root"], env={})
