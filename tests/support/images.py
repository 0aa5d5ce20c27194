"""Berth's built images and `podman run` with the pod's restrictions, for tests that use them.

`make images` (hack/build-images.sh) builds the images, saves them as archives in the cache and
lists them in `<cache>/images/current.json`; the refs come from there. A test that needs an image
fails, never skips, when podman, the manifest or the image is missing.

    ref = image("trainer")
    result = podman_run(ref, "--help")                       # --network none, read-only root
    with podman_start(image("operator"), "--help") as c: ...   # detached; removed on exit
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

#: hack/build-images.sh's cache (the same variables, the same default).
CACHE = Path(
    os.environ.get("BERTH_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "berth"
)
MANIFEST = CACHE / "images" / "current.json"
#: podman as this machine kind needs it: runc (crun refuses hybrid cgroups), cgroupfs (no
#: systemd), rlimits below the host's hard limits.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
ULIMITS = ["--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:4096"]
#: The images' user (Dockerfile `USER`, the chart's runAsUser/runAsGroup).
UID = GID = 65532
#: A host path, its path in the container, and "ro" or "rw".
Volume = tuple[Path | str, str, str]


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with this machine's runtime flags; never raises on a non-zero exit."""
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def image(target: str) -> str:
    """The ref of the built image `target` ("operator", "trainer", "trainer-gpu").

    Fails the test (with what to run) when podman, the manifest or the image is missing, or the
    image in podman's storage is not the one the manifest lists.
    """
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make images` installs it and builds the images")
    try:
        entry = json.loads(MANIFEST.read_text())["images"].get(target)
    except FileNotFoundError:
        pytest.fail(f"no image manifest {MANIFEST}: run `make images`")
    if entry is None:
        how = "make images-gpu" if target == "trainer-gpu" else "make images"
        pytest.fail(f"{MANIFEST} lists no {target} image: run `{how}`")
    ref, inputs = entry["ref"], entry["inputs"]
    labels = podman("image", "inspect", "--format", '{{index .Labels "dev.berth.inputs"}}', ref)
    if labels.returncode or labels.stdout.strip() != inputs:
        pytest.fail(
            f"{ref} (inputs {inputs}) is not in podman's storage: run `make images`, which loads "
            f"it from {entry['archive']}\n{labels.stderr}"
        )
    return ref


def owned_by_image_user(path: Path) -> Path:
    """Make directory `path` writable by the images' user (as a pod's fsGroup would)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, GID)
    return path


def readable(path: Path) -> Path:
    """Let the images' user read directory `path` (pytest's tmp dirs are private to root)."""
    path.chmod(0o755)
    return path


def _run_args(
    ref: str,
    args: Iterable[str],
    volumes: Iterable[Volume],
    env: Mapping[str, str],
    network: str,
    name: str,
    detach: bool = False,
) -> list[str]:
    """`podman run` the way the chart runs a pod: non-root, read-only root with a writable
    /tmp only, no capabilities, no privilege escalation."""
    return [
        "run",
        *(["--detach"] if detach else []),
        f"--name={name}",
        *ULIMITS,
        f"--user={UID}:{GID}",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,size=512m,mode=1777",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--network={network}",
        *(f"--volume={Path(host)}:{target}:{mode}" for host, target, mode in volumes),
        *(f"--env={key}={value}" for key, value in env.items()),
        ref,
        *args,
    ]


def podman_run(
    ref: str,
    *args: str,
    volumes: Iterable[Volume] = (),
    env: Mapping[str, str] | None = None,
    network: str = "none",
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run `ref` with `args` to completion (output captured); the container is removed."""
    name = f"berth-test-{uuid.uuid4().hex[:10]}"
    try:
        return podman(*_run_args(ref, args, volumes, env or {}, network, name), timeout=timeout)
    finally:
        podman("rm", "--force", "--ignore", name)


class Container:
    """A detached container started by `podman_start`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def logs(self) -> str:
        out = podman("logs", self.name)
        return out.stdout + out.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name)
        return state.stdout.strip() == "true"

    def stop(self, timeout: int = 20) -> int:
        """SIGTERM (SIGKILL after `timeout` seconds, as a pod's grace period); the exit code."""
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(code.stdout.strip())


@contextmanager
def podman_start(
    ref: str,
    *args: str,
    volumes: Iterable[Volume] = (),
    env: Mapping[str, str] | None = None,
    network: str = "none",
) -> Iterator[Container]:
    """Start `ref` detached; yields the Container and removes it (and prints its log) on exit."""
    name = f"berth-test-{uuid.uuid4().hex[:10]}"
    started = podman(*_run_args(ref, args, volumes, env or {}, network, name, detach=True))
    container = Container(name)
    try:
        assert started.returncode == 0, f"podman run failed:\n{started.stderr}"
        yield container
    finally:
        print(f"--- log of {name} ---\n{container.logs()}")  # shown when the test fails
        podman("rm", "--force", "--ignore", name)
