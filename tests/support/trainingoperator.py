"""Kubeflow's training-operator (TFJob), the reference bench/faults.py compares Berth with: run
the build hack/build-tfjob-reference.sh caches, as a process against the test control plane.

Outside a pod two things its certificate rotator waits for are missing, and we supply them: the
Secret it writes its serving certificate to (created empty; the certificate is then copied to the
fixed directory a mounted Secret would fill) and its ValidatingWebhookConfiguration (into which
it injects its CA before it calls itself ready). The webhook is registered matching no object:
the API server cannot reach it by its Service name, and validation is not what is measured.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from berth_operator.local.runner import die_with_parent, free_port
from tests.support.processes import stop

REPO = Path(__file__).resolve().parents[2]
TRAINING_OPERATOR_VERSION = os.environ.get("TRAINING_OPERATOR_VERSION", "v1.9.4")
#: training-operator's fixed certificate directory (its pkg/cert certDir; controller-runtime's
#: webhook server reads the same one): outside a pod no Secret volume fills it, so we do.
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
WEBHOOK = "validator.training-operator.kubeflow.org"
SECRET = "training-operator-webhook-cert"
POLL = 0.25


def cache_dir() -> Path:
    return Path(
        os.environ.get("BERTH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "berth"
    )


def _kubectl(*args: str) -> None:
    out = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")


def _never_called_webhook(port: int, label: str) -> dict[str, Any]:
    """Its ValidatingWebhookConfiguration, matching no object (label `label`=never)."""
    return {
        "metadata": {"name": WEBHOOK},
        "webhooks": [
            {
                "name": "validator.tfjob.training-operator.kubeflow.org",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/validate-kubeflow-org-v1-tfjob"},
                "rules": [
                    {
                        "apiGroups": ["kubeflow.org"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["tfjobs"],
                    }
                ],
                "objectSelector": {"matchLabels": {label: "never"}},
            }
        ],
    }


def _wait(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + 60
    while not (value := check()):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"training-operator: {what} did not happen; see {log}")
        time.sleep(POLL)
    return value


def _ready(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/readyz"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)
    return False


@contextlib.contextmanager
def training_operator(
    api: client.ApiClient, namespace: str, log: Path, label: str
) -> Iterator[subprocess.Popen[bytes]]:
    """training-operator --enable-scheme=tfjob watching `namespace`, ready (its controllers
    start only once its certificate rotator is), logging to `log`; its webhook configuration
    matches objects labelled `label`=never. Stopped, and the webhook configuration deleted, at
    exit."""
    binary = cache_dir() / "bin" / f"training-operator-{TRAINING_OPERATOR_VERSION}"
    crds = cache_dir() / f"training-operator-{TRAINING_OPERATOR_VERSION}" / "crds"
    crd = crds / "kubeflow.org_tfjobs.yaml"
    if not binary.exists() or not crd.exists():
        raise RuntimeError(f"not built: run hack/build-tfjob-reference.sh ({binary}, {crd})")
    _kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    extensions = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + 60
    while not any(
        c.type == "Established" and c.status == "True"
        for c in extensions.read_custom_resource_definition("tfjobs.kubeflow.org").status.conditions
        or []
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("CRD tfjobs.kubeflow.org not Established")
        time.sleep(POLL)
    core = client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET}})
    webhook_port, probe_port = free_port(), free_port()
    with contextlib.suppress(ApiException):
        admission.delete_validating_webhook_configuration(WEBHOOK)
    admission.create_validating_webhook_configuration(_never_called_webhook(webhook_port, label))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "--enable-scheme=tfjob",
                f"--namespace={namespace}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{probe_port}",
                f"--webhook-server-port={webhook_port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MY_POD_NAMESPACE": namespace},
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
    try:
        data = _wait(
            "certificate written",
            lambda: (
                (core.read_namespaced_secret(SECRET, namespace).data or {}).get("tls.crt")
                and core.read_namespaced_secret(SECRET, namespace).data
            ),
            proc,
            log,
        )
        CERT_DIR.mkdir(parents=True, exist_ok=True)
        for key in ("tls.crt", "tls.key"):
            (CERT_DIR / key).write_bytes(base64.b64decode(data[key]))
        _wait("ready", lambda: _ready(probe_port), proc, log)
        yield proc
    finally:
        stop(proc, grace=15)
        with contextlib.suppress(ApiException):
            admission.delete_validating_webhook_configuration(WEBHOOK)


def build_training_operator() -> str | None:
    """hack/build-tfjob-reference.sh (cached: a second when warm); None, or why it failed."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "build-tfjob-reference.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode == 0:
        return None
    return " ".join(out.stderr.strip().splitlines()[-3:]) or f"exit {out.returncode}"
