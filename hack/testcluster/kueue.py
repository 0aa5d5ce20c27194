"""Kueue: its CRDs, its controller manager and the webhook configurations of its own kinds."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

from .config import PKI, STATE, cache_dir, versions
from .health import http_ok, kubectl
from .processes import Failure, start, wait_until

#: Kueue's configuration. Job kinds: its default batch/job (nothing here labels a Job) and
#: BertTraining, whose Workloads the Berth operator creates (an external framework:
#: docs/operator.md, "With Kueue"; the name is pinned by tests/unit/operator/test_op_kueue.py).
KUEUE_CONFIG = """apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
health:
  healthProbeBindAddress: 127.0.0.1:{health}
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: {webhook}
  certDir: {certs}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
# All-or-nothing as clusters run it: no other admission while an admitted Workload's pods are
# not all Ready (the operator keeps its PodsReady condition; tests/integration/test_kueue.py).
waitForPodsReady:
  timeout: 5m
  blockAdmission: true
integrations:
  frameworks: ["batch/job"]  # the default (an empty list means it too); no webhook for it here
  externalFrameworks: ["BertTraining.v1alpha1.berth.dev"]
"""


def kueue_manifests() -> Path:
    return cache_dir() / f"kueue-{versions()['KUEUE_VERSION']}"


def start_kueue(kueue: Path, ports: dict[str, int]) -> None:
    """Kueue's CRDs, its controller manager (webhooks on loopback, serving a certificate of our
    CA; no visibility API server) and the webhook configurations of its own kinds."""
    manifests = kueue_manifests()
    if not (manifests / "webhooks.yaml").exists():
        raise Failure(f"Kueue's manifests are missing in {manifests}: run `make control-plane`")
    kubectl("apply", "--server-side", "-f", str(manifests / "crds"))
    established = lambda: (  # noqa: E731
        kubectl(
            "wait", "--for=condition=Established", "crd", "--all", "--timeout=5s", check=False
        ).returncode
        == 0
    )
    wait_until("Kueue's CRDs Established", established, 60, "kube-apiserver")
    certs = PKI / "kueue-webhook"
    certs.mkdir(exist_ok=True)
    shutil.copy(PKI / "kueue-webhook.crt", certs / "tls.crt")
    shutil.copy(PKI / "kueue-webhook.key", certs / "tls.key")
    config = STATE / "kueue.yaml"
    config.write_text(
        KUEUE_CONFIG.format(
            health=ports["kueue_health"], webhook=ports["kueue_webhook"], certs=certs
        )
    )
    # Without Kueue's own certificate management, its manager reads a metrics certificate from
    # a fixed path, /etc/kueue/metrics/certs (metrics are off here: any certificate does). It
    # runs in a mount namespace of its own whose /etc is a tmpfs holding just that: the host's
    # /etc is not touched. Its Go code reads nothing else there (the kubeconfig has the CA).
    metrics_certs = "/etc/kueue/metrics/certs"
    script = (
        "set -e; mount -t tmpfs -o size=1m,mode=755 berth-kueue-etc /etc; "
        f"mkdir -p {metrics_certs}; cp {certs}/tls.crt {certs}/tls.key {metrics_certs}/; "
        'exec "$@"'
    )
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    start(
        "kueue",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            *userns,
            "sh",
            "-c",
            script,
            "kueue",
            str(kueue),
            f"--config={config}",
            f"--kubeconfig={STATE / 'kueue.kubeconfig'}",
            "--feature-gates=VisibilityOnDemand=false",
        ],
    )
    ready = f"http://127.0.0.1:{ports['kueue_health']}/readyz"
    wait_until("Kueue ready", lambda: http_ok(ready), 60, "kueue")
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(kueue_webhooks(ports)))


def kueue_webhooks(ports: dict[str, int]) -> dict[str, object]:
    """The module's webhook configurations, for Kueue's own kinds only, calling the manager at
    https://127.0.0.1:<port><path> instead of through a Service."""
    listed = kubectl(
        "create", "--dry-run=client", "-o", "json", "-f", str(kueue_manifests() / "webhooks.yaml")
    )
    docs, text, decoder = [], listed.stdout.strip(), json.JSONDecoder()
    while text:  # one JSON document per YAML document
        doc, end = decoder.raw_decode(text)
        docs.append(doc)
        text = text[end:].lstrip()
    ca = base64.b64encode((PKI / "ca.crt").read_bytes()).decode()
    items = []
    for doc in docs:
        hooks = []
        for hook in doc.get("webhooks", []):
            if not any("kueue.x-k8s.io" in r.get("apiGroups", []) for r in hook["rules"]):
                continue
            path = hook["clientConfig"]["service"]["path"]
            url = f"https://127.0.0.1:{ports['kueue_webhook']}{path}"
            hooks.append({**hook, "clientConfig": {"url": url, "caBundle": ca}})
        name = "kueue-" + doc["metadata"]["name"]
        items.append({**doc, "metadata": {"name": name}, "webhooks": hooks})
    return {"apiVersion": "v1", "kind": "List", "items": items}
