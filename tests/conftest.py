"""Session-wide fixtures: the real control plane (hack/cluster.py) and a namespace per test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: State of the control plane (hack/cluster.py honours the same variable).
CLUSTER = Path(os.environ.get("BERTH_CLUSTER_DIR", REPO / ".cluster"))
#: Links to the pinned binaries, made by hack/build-control-plane.sh.
BIN = REPO / ".cluster" / "bin"


def cluster_command(
    *command: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`hack/cluster.py COMMAND...` (it takes the cluster's lock: one command at a time)."""
    return subprocess.run(
        [sys.executable, str(REPO / "hack" / "cluster.py"), *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    """Path of an admin kubeconfig for the real control plane, started once per session.

    A cluster already running (`make cluster-up`) is reused and left running; one this fixture
    started is stopped at the end unless BERTH_KEEP_CLUSTER=1.
    """
    started = cluster_command("status").returncode != 0
    if started:
        result = cluster_command("up")
        if result.returncode:
            pytest.fail(f"control plane failed to start:\n{result.stdout}\n{result.stderr}")
    path = str(CLUSTER / "kubeconfig")
    os.environ["KUBECONFIG"] = path
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    yield path
    if started and os.environ.get("BERTH_KEEP_CLUSTER") != "1":
        cluster_command("down")


@pytest.fixture(scope="session")
def api(kubeconfig: str) -> Iterator[object]:
    """A kubernetes.client.ApiClient for the admin kubeconfig."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=kubeconfig)
    yield api_client
    api_client.close()


def new_namespace(api: object) -> str:
    """Create a fresh namespace (Pod Security `restricted` enforced) and wait for its `default`
    ServiceAccount (pods can be created)."""
    from kubernetes import client

    from tests.support.podsecurity import NAMESPACE_LABELS
    from tests.support.waiting import wait_for

    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name, "labels": NAMESPACE_LABELS}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"ServiceAccount default in {name}",
    )
    return name


def delete_namespace(api: object, name: str) -> None:
    from kubernetes import client

    client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def namespace(api: object) -> Iterator[str]:
    """A fresh namespace for one test, deleted after it."""
    name = new_namespace(api)
    yield name
    delete_namespace(api, name)
