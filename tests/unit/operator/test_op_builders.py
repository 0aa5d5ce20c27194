"""Builders: spec → ConfigMap, headless Service and worker pods."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from berth_operator import builders, labels
from berth_operator.podtemplate import merge_pod_template
from berth_trainer.config import TrainerConfig
from tests.unit.operator.factories import make_training


def _env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_tf_config_lists_every_worker_and_own_index(workers: int) -> None:
    training = make_training(workers=workers)
    for index, pod in enumerate(builders.build_worker_pods(training, "img", restart=0)):
        tf_config = json.loads(_env(pod)["TF_CONFIG"])
        assert tf_config == {
            "cluster": {"worker": [f"bert-worker-{i}.bert.ml.svc:2222" for i in range(workers)]},
            "task": {"type": "worker", "index": index},
            "environment": "cloud",
        }


def test_single_worker_has_no_tf_config() -> None:
    (pod,) = builders.build_worker_pods(make_training(workers=1), "img", restart=0)
    assert "TF_CONFIG" not in _env(pod)


def test_pod_identity_dns_and_labels() -> None:
    pod = builders.build_worker_pod(make_training(), 2, "img", restart=4)
    assert pod["metadata"]["name"] == "bert-worker-2"
    assert pod["spec"]["hostname"] == "bert-worker-2"
    assert pod["spec"]["subdomain"] == "bert"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"] == {
        labels.TRAINING: "bert",
        labels.ROLE: "worker",
        labels.INDEX: "2",
        labels.RESTART: "4",
        "app.kubernetes.io/name": "berth-trainer",
        "app.kubernetes.io/instance": "bert",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "berth",
        "app.kubernetes.io/managed-by": "berth-operator",
    }


def test_container_command_ports_mount_and_security() -> None:
    pod = builders.build_worker_pod(make_training(), 0, "img:1", restart=0)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "img:1"
    assert container["command"] == ["berth-trainer", "train", "--config", "/etc/berth/config.yaml"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "tf-port": 2222,
        "metrics": 9090,
    }
    assert container["volumeMounts"] == [
        {"name": "berth-config", "mountPath": "/etc/berth", "readOnly": True},
        {"name": "berth-tmp", "mountPath": "/tmp"},
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["volumes"][1] == {"name": "berth-tmp", "emptyDir": {}}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == "bert-config"


def test_spec_image_wins_over_default_and_resources_are_set() -> None:
    training = make_training().with_spec(image="mine:2").with_gpu(8)
    (container,) = builders.build_worker_pod(training, 0, "default", restart=0)["spec"][
        "containers"
    ]
    assert container["image"] == "mine:2"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "8"}}


def _gpu_template(resources: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "trainer", "resources": resources}]}}


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        (make_training(), None),
        (make_training().with_gpu(8), "8"),
        (make_training().with_gpu(8).with_spec(allowCpuFallback=True), None),
        (make_training().with_spec(resources={"requests": {"nvidia.com/gpu": "2"}}), "2"),
        (make_training().with_spec(resources={"limits": {"cpu": "4"}}), None),
        # A template's trainer resources count when spec.resources is not set.
        (
            make_training().with_spec(podTemplate=_gpu_template({"limits": {"nvidia.com/gpu": 1}})),
            "1",
        ),
        # A sidecar's GPU is not the trainer's.
        (
            make_training().with_spec(
                podTemplate={
                    "spec": {
                        "containers": [
                            {"name": "side", "resources": {"limits": {"nvidia.com/gpu": 1}}}
                        ]
                    }
                }
            ),
            None,
        ),
    ],
)
def test_expected_gpus_reach_the_trainer(training: dict[str, Any], expected: str | None) -> None:
    """The trainer fails fast (exit 6) when it sees fewer GPUs than BERTH_EXPECTED_GPUS."""
    pod = builders.build_worker_pod(training, 0, "img", restart=0)
    (trainer,) = (c for c in pod["spec"]["containers"] if c["name"] == "trainer")
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env.get("BERTH_EXPECTED_GPUS") == expected


@pytest.mark.parametrize(
    ("template", "grace"),
    [({}, "30"), ({"spec": {"terminationGracePeriodSeconds": 15}}, "15")],
)
def test_the_trainer_knows_its_sigterm_budget(template: dict[str, Any], grace: str) -> None:
    """It starts a checkpoint on SIGTERM only if the save fits the pod's grace period."""
    pod = builders.build_worker_pod(make_training().with_spec(podTemplate=template), 0, "i", 0)
    (trainer,) = (c for c in pod["spec"]["containers"] if c["name"] == "trainer")
    env = [e for e in trainer["env"] if e["name"] == "BERTH_TERMINATION_GRACE_SECONDS"]
    assert env == [{"name": "BERTH_TERMINATION_GRACE_SECONDS", "value": grace}]


def test_config_map_is_the_trainer_config() -> None:
    cm = builders.build_config_map(make_training())
    assert cm["metadata"]["name"] == "bert-config"
    config = TrainerConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert config.checkpoint.dir == "gs://b/ckpt"
    assert config.training.global_batch_size == 48
    assert "workers" not in cm["data"]["config.yaml"]


def test_headless_service() -> None:
    svc = builders.build_service(make_training())
    assert svc["metadata"]["name"] == "bert"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {labels.TRAINING: "bert", labels.ROLE: "worker"}
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "tf-port": 2222,
        "metrics": 9090,
    }


POD_TEMPLATE = {
    "metadata": {"labels": {"team": "nlp", labels.TRAINING: "evil"}, "annotations": {"a": "b"}},
    "spec": {
        "hostname": "ignored",
        "restartPolicy": "Always",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "serviceAccountName": "trainer",
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [
            {
                "name": "trainer",
                "env": [{"name": "EXTRA", "value": "1"}, {"name": "TF_CONFIG", "value": "bad"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "resources": {"requests": {"memory": "8Gi"}},
            },
            {"name": "sidecar", "image": "busybox"},
        ],
    },
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("metadata", "labels", "team"), "nlp"),
        (("metadata", "labels", labels.TRAINING), "bert"),
        (("metadata", "annotations", "a"), "b"),
        (("spec", "hostname"), "bert-worker-0"),
        (("spec", "restartPolicy"), "Never"),
        (("spec", "nodeSelector"), {"pool": "gpu"}),
        (("spec", "serviceAccountName"), "trainer"),
        (("spec", "automountServiceAccountToken"), True),
        (("spec", "containers", 1, "name"), "sidecar"),
        (("spec", "volumes", 2, "name"), "data"),
        (
            ("spec", "containers", 0, "resources"),
            {"limits": {"nvidia.com/gpu": "8"}, "requests": {"memory": "8Gi"}},
        ),
        (("spec", "containers", 0, "volumeMounts", 2, "mountPath"), "/data"),
    ],
)
def test_pod_template_merge(path: tuple, expected: object) -> None:
    training = make_training().with_gpu(8).with_spec(podTemplate=POD_TEMPLATE)
    value: Any = builders.build_worker_pod(training, 0, "img", restart=0)
    for key in path:
        value = value[key]
    assert value == expected


def test_pod_template_cannot_replace_tf_config() -> None:
    training = make_training().with_spec(podTemplate=POD_TEMPLATE)
    env = builders.build_worker_pod(training, 1, "img", restart=0)["spec"]["containers"][0]["env"]
    assert next(e["value"] for e in env if e["name"] == "TF_CONFIG") != "bad"
    assert sum(e["name"] == "TF_CONFIG" for e in env) == 1


def test_explicit_template_security_context_wins() -> None:
    pod = merge_pod_template(
        {"spec": {"securityContext": {"runAsUser": 1000}, "containers": []}},
        {"spec": {"securityContext": {"runAsUser": 2000}}},
    )
    assert pod["spec"]["securityContext"] == {"runAsUser": 2000}
