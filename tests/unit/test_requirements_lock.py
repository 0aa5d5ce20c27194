"""The hash-locked requirements the images install (made by `hack/lock-requirements.sh`).

Offline and cheap: a range edited in a requirements file without re-locking fails here, not in an
image build minutes later. Each lock must pin every requirement of its file at a version inside
the range, with the requested extras; every pin must be exact and carry sha256 hashes (what
`pip install --require-hashes` demands); a package shared with the trainer lock has the
trainer's version (one version per package across the images and CI's .venv); and the build
lock holds every build requirement of Berth's projects (the images build without isolation).
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
#: Each lock and the requirements file it is resolved from.
LOCKS = {
    "trainer/requirements.lock": "trainer/requirements.txt",
    "operator/requirements.lock": "operator/requirements.txt",
    "trainer/requirements-gpu.lock": "trainer/requirements-gpu.txt",
    "requirements-build.lock": "requirements-build.txt",
}
#: The images' platform, for environment markers.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def requirements(path: str) -> list[Requirement]:
    """The requirements of a requirements file, `-r` includes followed, comments dropped."""
    found: list[Requirement] = []
    for raw in (REPO / path).read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line.startswith("-r "):
            found += requirements(str(Path(path).parent / line.removeprefix("-r ").strip()))
        elif line:
            found.append(Requirement(line))
    return found


@cache
def pins(lock: str) -> dict[str, tuple[Requirement, list[str]]]:
    """Each locked package (canonical name) with its requirement line and its hashes."""
    text = re.sub(r"\s*\\\n\s*", " ", (REPO / lock).read_text())
    found: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec, *options = line.split()
        requirement = Requirement(spec)
        found[canonicalize_name(requirement.name)] = (requirement, HASH.findall(" ".join(options)))
    return found


def pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not pinned with =="
    return specifier.version


@pytest.mark.parametrize(("lock", "source"), LOCKS.items())
def test_every_requirement_is_locked_inside_its_range(lock: str, source: str) -> None:
    locked = pins(lock)
    for requirement in requirements(source):
        if requirement.marker and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{source}: {requirement.name} missing from {lock}: re-lock"
        pin, _ = locked[name]
        version = pinned_version(pin)
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside {source}'s `{requirement}`: "
            "run hack/lock-requirements.sh"
        )
        assert requirement.extras <= pin.extras, f"{lock}: {pin} lacks extras {requirement.extras}"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    locked = pins(lock)
    assert locked, f"{lock} is empty"
    for name, (pin, hashes) in locked.items():
        pinned_version(pin)
        assert hashes, f"{lock}: {name} has no --hash"


@pytest.mark.parametrize("lock", [lock for lock in LOCKS if lock != "trainer/requirements.lock"])
def test_shared_packages_have_the_trainers_version(lock: str) -> None:
    trainer = pins("trainer/requirements.lock")
    for name, (pin, _) in pins(lock).items():
        if name in trainer:
            assert pinned_version(pin) == pinned_version(trainer[name][0]), (lock, name)


@pytest.mark.parametrize("project", ["trainer", "operator"])
def test_the_build_lock_holds_the_build_requirements(project: str) -> None:
    """The images build Berth's wheels (and sdist-only packages) with the locked backend only."""
    locked = pins("requirements-build.lock")
    with open(REPO / project / "pyproject.toml", "rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{project}'s build requirement {name} is not in requirements-build"
        assert requirement.specifier.contains(pinned_version(locked[name][0])), requirement
