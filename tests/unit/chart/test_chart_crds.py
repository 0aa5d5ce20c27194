"""The chart ships the generated BertTraining CRD unchanged, plus kopf's peering CRDs."""

from __future__ import annotations

import subprocess

import yaml

from tests.unit.chart.helm import CHART, REPO, render

GENERATED = REPO / "crds" / "berth.dev_berttrainings.yaml"
CHART_COPY = CHART / "crds" / "berth.dev_berttrainings.yaml"
PEERING = CHART / "crds" / "kopf.dev_peerings.yaml"


def test_chart_crd_is_an_exact_copy_of_the_generated_one() -> None:
    assert GENERATED.exists(), "crds/ has no generated CRD: run `make crds`"
    assert CHART_COPY.exists(), "run `bash hack/sync-chart-crds.sh`"
    assert CHART_COPY.read_bytes() == GENERATED.read_bytes(), (
        f"{CHART_COPY.relative_to(REPO)} differs from {GENERATED.relative_to(REPO)}: "
        "run `bash hack/sync-chart-crds.sh`"
    )


def test_sync_script_check_agrees() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "sync-chart-crds.sh"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_crds_come_with_the_chart() -> None:
    crds = {
        obj["metadata"]["name"]: obj
        for obj in render(include_crds=True)
        if obj["kind"] == "CustomResourceDefinition"
    }
    assert set(crds) == {
        "berttrainings.berth.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    assert crds["berttrainings.berth.dev"] == yaml.safe_load(GENERATED.read_text())


def test_peering_crds_are_kopfs() -> None:
    crds = {doc["spec"]["names"]["kind"]: doc for doc in yaml.safe_load_all(PEERING.read_text())}
    assert set(crds) == {"ClusterKopfPeering", "KopfPeering"}
    assert crds["ClusterKopfPeering"]["spec"]["scope"] == "Cluster"
    assert crds["KopfPeering"]["spec"]["scope"] == "Namespaced"
    for kind, crd in crds.items():
        plural = kind.lower() + "s"
        assert crd["metadata"]["name"] == f"{plural}.kopf.dev"
        assert crd["spec"]["group"] == "kopf.dev"
        assert crd["spec"]["names"]["plural"] == plural
        (version,) = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
