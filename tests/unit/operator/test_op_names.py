"""metadata.name is bounded so that every name derived from it is valid, and `berth validate`
refuses what the API server refuses (tests/integration/test_crd_validation.py: the server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from berth_operator import builders, kueue, labels
from berth_operator.api import MAX_NAME_LENGTH, MAX_WORKERS
from berth_operator.local.cli import EXIT_INVALID, main

from .factories import make_training

# Kubernetes' own validation (k8s.io/apimachinery/pkg/util/validation).
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONGEST = "b" + "-x" * ((MAX_NAME_LENGTH - 1) // 2)


def test_longest_name_with_most_workers_derives_only_valid_names() -> None:
    assert len(LONGEST) == MAX_NAME_LENGTH
    training = make_training(LONGEST, workers=MAX_WORKERS).with_spec(
        training={"globalBatchSize": MAX_WORKERS, "sequenceLength": 64}
    )
    pod = builders.build_worker_pod(training, MAX_WORKERS - 1, "img", restart=0)
    service, config_map = builders.build_service(training), builders.build_config_map(training)
    hostname = pod["spec"]["hostname"]
    assert len(hostname) <= 63 and DNS1123_LABEL.match(hostname), hostname
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert len(LONGEST) <= 63 and DNS1035_LABEL.match(service["metadata"]["name"])
    training["metadata"]["labels"] = {labels.KUEUE_QUEUE: "team-a"}
    workload = kueue.build_workload(training, pod, None)
    for obj in (pod, config_map, workload):
        name = obj["metadata"]["name"]
        assert len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), name
    for obj in (pod, service, config_map, workload):
        for key, value in obj["metadata"]["labels"].items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)


def _manifest(tmp_path: Path, name: str) -> Path:
    training = dict(make_training(name, workers=2))
    training["metadata"] = {"name": name}
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump(training))
    return path


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("b" * 60, f"no more than {MAX_NAME_LENGTH} characters"),
        ("b" * (MAX_NAME_LENGTH + 1), f"no more than {MAX_NAME_LENGTH} characters"),
        ("9bert", "a DNS-1035 label"),
        ("Bert", "a DNS-1035 label"),
        ("bert-", "a DNS-1035 label"),
    ],
)
def test_berth_validate_refuses_names_the_crd_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, says: str
) -> None:
    assert main(["validate", str(_manifest(tmp_path, name))]) == EXIT_INVALID
    assert f"metadata.name: must be {says}" in capsys.readouterr().err


def test_berth_validate_accepts_the_longest_name(tmp_path: Path) -> None:
    assert main(["validate", str(_manifest(tmp_path, LONGEST))]) == 0
