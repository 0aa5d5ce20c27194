"""spec.tensorboard: the TensorBoard Deployment, Service and NetworkPolicy (pure layer)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from berth_operator import labels, podpolicy
from berth_operator.builders import build_worker_pod
from berth_operator.kubectl.tensorboard import listening_port, stuck
from berth_operator.networkpolicy import build_network_policy, build_tensorboard_network_policy
from berth_operator.tensorboard import (
    build_all,
    build_deployment,
    build_service,
    enabled,
    tensorboard_name,
)
from tests.unit.operator.factories import Training, make_training

#: A training whose output is on a volume the workers mount (the real node's way).
ON_A_VOLUME = {
    "spec": {
        "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "runs"}}],
        "containers": [
            {
                "name": "trainer",
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                "env": [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/keys/sa.json"}],
            }
        ],
        "imagePullSecrets": [{"name": "registry"}],
    }
}


def with_tensorboard(training: Training, **fields: Any) -> Training:
    return training.with_spec(tensorboard={"enabled": True, **fields})


def pod_of(training: Training) -> dict[str, Any]:
    return build_deployment(training, "img")["spec"]["template"]


def container_of(training: Training) -> dict[str, Any]:
    return pod_of(training)["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("output", "template", "logdir", "mounts"),
    [
        ("gs://b/out", None, "gs://b/out/tensorboard", ["berth-tmp"]),
        ("gs://b/out/", None, "gs://b/out/tensorboard", ["berth-tmp"]),
        ("/work/out", ON_A_VOLUME, "/work/out/tensorboard", ["berth-tmp", "work"]),
    ],
)
def test_tensorboard_reads_the_log_folder_where_the_workers_write_it(
    output: str, template: dict[str, Any] | None, logdir: str, mounts: list[str]
) -> None:
    training = with_tensorboard(make_training()).with_spec(output={"dir": output})
    if template is not None:
        training = training.with_spec(podTemplate=template)
    pod, worker = pod_of(training), build_worker_pod(training, 0, "img", restart=0)
    (container,) = pod["spec"]["containers"]
    assert container["command"] == [
        "tensorboard",
        "--logdir",
        logdir,
        "--bind_all",
        "--port",
        "6006",
        "--load_fast",
        "false",
    ]
    assert container["image"] == worker["spec"]["containers"][0]["image"]
    assert sorted(m["name"] for m in container["volumeMounts"]) == mounts
    # The trainer's config is not TensorBoard's business (its ConfigMap may not exist yet).
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert volumes == {v["name"] for v in worker["spec"]["volumes"]} - {"berth-config"}
    for same in ("imagePullSecrets", "enableServiceLinks", "automountServiceAccountToken"):
        assert pod["spec"].get(same) == worker["spec"].get(same), same


def test_the_workers_env_but_not_their_identity() -> None:
    training = with_tensorboard(make_training(workers=2)).with_spec(podTemplate=ON_A_VOLUME)
    env = {e["name"] for e in container_of(training)["env"]}
    assert env == {"GOOGLE_APPLICATION_CREDENTIALS"}  # the credentials the workers read with


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (None, {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}),
        ({"limits": {"memory": "2Gi", "cpu": 1}}, {"limits": {"memory": "2Gi", "cpu": "1"}}),
        (
            {"limits": {"nvidia.com/gpu": 1, "memory": "2Gi"}, "requests": {"cpu": "200m"}},
            {"limits": {"memory": "2Gi"}, "requests": {"cpu": "200m"}},
        ),
    ],
)
def test_resources_are_tensorboards_own_never_the_workers_gpus(
    resources: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    fields = {} if resources is None else {"resources": resources}
    training = with_tensorboard(make_training().with_gpu(8), **fields)
    assert container_of(training)["resources"] == expected


@pytest.mark.parametrize(
    ("template", "pod_security", "container_security"),
    [
        (
            None,
            {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        ),
        (
            {
                "spec": {
                    "securityContext": {"fsGroup": 2000, "runAsUser": 1000},
                    "containers": [{"name": "trainer", "securityContext": {"runAsGroup": 7}}],
                }
            },
            {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 65532,
                "fsGroup": 2000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "runAsGroup": 7,
            },
        ),
    ],
)
def test_pod_security_is_the_workers_with_the_pod_template_merged(
    template: dict[str, Any] | None,
    pod_security: dict[str, Any],
    container_security: dict[str, Any],
) -> None:
    training = with_tensorboard(make_training())
    if template is not None:
        training = training.with_spec(podTemplate=template)
    pod = pod_of(training)
    assert pod["spec"]["securityContext"] == pod_security
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == container_security
    # A read-only root: TensorBoard writes under /tmp, an emptyDir.
    assert {"name": "berth-tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "berth-tmp", "emptyDir": {}} in pod["spec"]["volumes"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert podpolicy.violations(pod, podpolicy.Level.RESTRICTED) == []


def test_a_service_account_asked_for_is_the_workers_identity_there_too() -> None:
    training = with_tensorboard(make_training()).with_spec(
        podTemplate={"spec": {"serviceAccountName": "gcs-reader"}}
    )
    spec = pod_of(training)["spec"]
    assert spec["serviceAccountName"] == "gcs-reader"
    assert spec["automountServiceAccountToken"] is True  # as the workers (workload identity)


def test_names_labels_and_selectors_pick_the_tensorboard_pod_only() -> None:
    training = with_tensorboard(make_training("bert", "ml"))
    deployment, service = build_all(training, "img")
    policy = build_tensorboard_network_policy(training)
    assert {o["metadata"]["name"] for o in (deployment, service, policy)} == {"bert-tensorboard"}
    assert tensorboard_name("bert") == "bert-tensorboard"
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert pod_labels[labels.ROLE] == "tensorboard" and pod_labels[labels.TRAINING] == "bert"
    assert labels.INDEX not in pod_labels and labels.RESTART not in pod_labels
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        policy["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
        worker = build_worker_pod(training, 0, "img", 0)
        assert not selector.items() <= worker["metadata"]["labels"].items()
        other = build_deployment(with_tensorboard(make_training("bert-2", "ml")), "img")
        assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
    # ... and the workers' own policy never takes it for a worker.
    workers = build_network_policy(training, [])["spec"]["podSelector"]["matchLabels"]
    assert not workers.items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 6006, "targetPort": "http", "protocol": "TCP"}
    ]
    assert template["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {
        "path": "/",
        "port": "http",
    }
    assert template["spec"]["restartPolicy"] == "Always"
    assert "hostname" not in template["spec"] and "subdomain" not in template["spec"]


def test_owned_by_the_training_as_the_operator_adopts_them() -> None:
    training = with_tensorboard(make_training("bert", "ml"))
    children = [*build_all(training, "img"), build_tensorboard_network_policy(training)]
    kopf.adopt(children, owner=kopf.Body(training))  # as controller._tensorboard does
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("BertTraining", "bert", "uid-1")
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True


def test_policy_admits_port_6006_from_the_trainings_namespace_only() -> None:
    policy = build_tensorboard_network_policy(with_tensorboard(make_training("bert", "ml")))
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress as the workers': gs:// reads
    (rule,) = policy["spec"]["ingress"]
    assert rule == {
        "ports": [{"protocol": "TCP", "port": 6006}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ml"}}}],
    }


@pytest.mark.parametrize(
    ("spec", "expected"),
    [({}, False), ({"tensorboard": {}}, False), ({"tensorboard": {"enabled": True}}, True)],
)
def test_enabled(spec: dict[str, Any], expected: bool) -> None:
    assert enabled({"spec": spec}) is expected


def test_service_is_cluster_internal() -> None:
    assert build_service(with_tensorboard(make_training()))["spec"]["type"] == "ClusterIP"


def tensorboard_pod(restarts: int = 0, waiting: str | None = None) -> dict[str, Any]:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {
        "metadata": {"name": "bert-tensorboard-x"},
        "status": {"containerStatuses": [{"restartCount": restarts, "state": state}]},
    }


@pytest.mark.parametrize(
    ("pods", "hopeless"),
    [
        ([], False),
        ([tensorboard_pod(waiting="ContainerCreating")], False),
        ([tensorboard_pod()], False),  # running, not ready yet: TensorBoard loads TensorFlow
        ([tensorboard_pod(restarts=1, waiting="CrashLoopBackOff")], False),
        ([tensorboard_pod(restarts=2, waiting="CrashLoopBackOff")], True),
        ([tensorboard_pod(waiting="ImagePullBackOff")], True),
        ([tensorboard_pod(waiting="RunContainerError")], True),  # e.g. no tensorboard in it
    ],
)
def test_kubectl_berth_tensorboard_gives_up_only_on_what_waiting_cannot_cure(
    pods: list[dict[str, Any]], hopeless: bool
) -> None:
    problem = stuck(pods)
    assert (problem is not None) is hopeless
    if problem is not None:
        assert problem.startswith("pod bert-tensorboard-x: ")


@pytest.mark.parametrize(
    ("line", "port"),
    [
        ("Forwarding from 127.0.0.1:40123 -> 6006\n", 40123),
        ("Forwarding from [::1]:40123 -> 6006", None),
        ("Handling connection for 40123", None),
    ],
)
def test_the_forwarded_port_is_read_from_kubectl(line: str, port: int | None) -> None:
    assert listening_port(line) == port
