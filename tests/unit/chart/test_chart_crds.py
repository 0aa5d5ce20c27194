"""The chart ships the generated BertTraining CRD unchanged, and no other CRD."""

from __future__ import annotations

import subprocess

import yaml

from tests.unit.chart.helm import CHART, REPO, render

GENERATED = REPO / "crds" / "berth.dev_berttrainings.yaml"
CHART_COPY = CHART / "crds" / "berth.dev_berttrainings.yaml"


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
    assert set(crds) == {"berttrainings.berth.dev"}  # leader election needs none: a Lease
    assert crds["berttrainings.berth.dev"] == yaml.safe_load(GENERATED.read_text())
