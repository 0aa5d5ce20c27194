"""The operator image against the real control plane: it starts as user 65532 with a read-only
root, serves kopf's liveness endpoint and its metrics, and exits 0 on SIGTERM.

The container shares the host's network (the API server listens on the host) and reads the
admin kubeconfig from a read-only mount."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

from berth_operator.local.runner import free_port
from tests.support.images import image, podman_start
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_operator_image_serves_liveness_and_stops_cleanly(
    kubeconfig: str, namespace: str, crd: str, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig"
    shutil.copy(kubeconfig, config)
    config.chmod(0o644)  # the image's user reads it, as a mounted Secret
    liveness, metrics = free_port(), free_port()
    with podman_start(
        image("operator"),
        *("--namespace", namespace, "--default-image", image("trainer")),
        *("--liveness-port", str(liveness), "--metrics-port", str(metrics)),
        volumes=[(config, "/etc/berth/kubeconfig", "ro")],
        env={"KUBECONFIG": "/etc/berth/kubeconfig"},
        network="host",
    ) as container:
        status, _ = wait_for(
            lambda: http_get(f"http://127.0.0.1:{liveness}/healthz"),
            timeout=90,
            what="the operator container's /healthz",
        )
        assert status == 200
        _, text = http_get(f"http://127.0.0.1:{metrics}/metrics")
        assert "berth_operator_" in text
        assert container.running()
        assert container.stop() == 0, container.logs()[-3000:]
