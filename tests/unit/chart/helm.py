"""Render charts/berth with the pinned helm (`helm template`) and pick objects out of the result."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "berth"
RELEASE = "berth"
NAMESPACE = "berth-system"
FULLNAME = "berth"  # the release name contains the chart name, so it is used as is

Objects = list[dict[str, Any]]


def helm_binary() -> str:
    """The pinned helm that `make control-plane` links into .cluster/bin, else one on PATH."""
    pinned = REPO / ".cluster" / "bin" / "helm"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm not found: run `make control-plane` (links .cluster/bin/helm)")
    return found


def run_helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm with `values` written to a values file; never raises on a failed command."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(values or {}, values_file)
        values_file.flush()
        return subprocess.run(
            [helm_binary(), *args, "--values", values_file.name],
            capture_output=True,
            text=True,
            timeout=60,
        )


@cache
def _render(values_json: str, include_crds: bool) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    result = run_helm(*args, values=json.loads(values_json))
    if result.returncode:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return result.stdout


def render(values: dict[str, Any] | None = None, include_crds: bool = False) -> Objects:
    """Every object `helm template` renders for `values`."""
    text = _render(json.dumps(values or {}, sort_keys=True), include_crds)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_error(values: dict[str, Any]) -> str:
    """helm's error output for values the chart must reject."""
    result = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def of_kind(objects: Objects, kind: str) -> Objects:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Objects, kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(objects: Objects) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])
