"""The generated CRD: fresh, structural, described, and carrying the documented rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from berth_operator import crdgen
from berth_operator.api import BertTrainingSpec


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.build_crd()


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_is_fresh() -> None:
    assert crdgen.main(["--check"]) == 0, "crds/ is stale: run python -m berth_operator.crdgen"


def test_every_field_is_described_by_its_json_name(crd: dict[str, Any]) -> None:
    spec = _schema(crd)["properties"]
    for root in ("spec", "status"):
        for path, node in _walk(spec[root], root):
            name = path.rsplit(".", 1)[-1]
            if name.endswith(("[]", "}")) or path == root:
                continue
            assert node.get("description", "").startswith(f"{name}:"), path


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in _walk(_schema(crd)):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title"} & set(node), path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".spec.podTemplate", path


@pytest.mark.parametrize(
    ("path", "default"),
    [
        (".spec.workers", 4),
        (".spec.runPolicy.backoffLimit", 3),
        (".spec.runPolicy.pendingTimeoutSeconds", 900),
        (".spec.runPolicy.restartPolicy", "OnFailure"),
        (".spec.runPolicy.suspend", False),
        (".spec.training", {}),
        (".spec.model", {"size": "base"}),
        (".spec.runPolicy.cleanPodPolicy", "Running"),
    ],
)
def test_defaults(crd: dict[str, Any], path: str, default: object) -> None:
    nodes = dict(_walk(_schema(crd)))
    assert nodes[path]["default"] == default


@pytest.mark.parametrize("field", ["workers", "task", "model"])
def test_immutable_fields(crd: dict[str, Any], field: str) -> None:
    rules = _schema(crd)["properties"]["spec"]["properties"][field]["x-kubernetes-validations"]
    assert rules == [{"rule": "self == oldSelf", "message": f"spec.{field}: field is immutable"}]


def test_cross_field_rules_name_their_field(crd: dict[str, Any]) -> None:
    rules = _schema(crd)["properties"]["spec"]["x-kubernetes-validations"]
    assert len(rules) >= 5
    for rule in rules:
        assert rule["message"].startswith(f"spec{rule['fieldPath']}")


def test_names_and_printer_columns(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "BertTraining",
        "berttrainings",
        ["bt"],
        ["berth"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Workers",
        "Step",
        "%",
        "Loss",
        "Examples/s",
        "Metric",
        "Restarts",
        "Disruptions",
        "Queue",
        "Age",
    ]


@pytest.mark.parametrize(
    "path", sorted(crdgen.DEFAULT_PATH.parents[1].glob("examples/*.yaml")), ids=lambda p: p.name
)
def test_examples_are_valid_trainings(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"].startswith("kueue.x-k8s.io/"):  # a queue for it (validated by
            continue  # the real Kueue: tests/integration/test_crd_validation.py)
        assert doc["kind"] == "BertTraining"
        spec = BertTrainingSpec.model_validate(doc["spec"])
        gpus = spec.resources and (spec.resources.limits or spec.resources.requests or {})
        if gpus and "nvidia.com/gpu" in gpus and not spec.allow_cpu_fallback:
            # The CPU image has no CUDA: such a worker would exit 6 (GPU missing).
            assert spec.image and spec.image.endswith("-gpu"), f"{path.name}: CPU image on GPUs"
