"""Fixtures of the operator's integration tests: the CRD, a real operator process, helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from berth_operator.local.runner import die_with_parent, free_port
from tests.support.podsecurity import NAMESPACE_LABELS
from tests.support.realnode import RealNode
from tests.support.waiting import wait_for
from tests.unit.chart.helm import CHART, run_helm

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "berth.dev_berttrainings.yaml"
GROUP, VERSION, PLURAL = "berth.dev", "v1alpha1", "berttrainings"
#: The chart's pod-policy admission objects the `crd` fixture applies, and the one namespace
#: their bindings leave out (values podPolicy.namespaces). Fixed: concurrent sessions render
#: identical bindings, and a suite run leaves the namespace for the next one.
POD_POLICY_TEMPLATES = (
    "templates/podpolicy-baseline.yaml",
    "templates/podpolicy-baseline-binding.yaml",
    "templates/podpolicy-restricted.yaml",
    "templates/podpolicy-restricted-binding.yaml",
)
WIDENED_NAMESPACE = "berth-pod-policy-privileged"


def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


@pytest.fixture(scope="session")
def crd(kubeconfig: str) -> str:
    """Apply the generated CRD (server-side) and wait until it is Established; apply the
    chart's pod-policy ValidatingAdmissionPolicies and bindings (the chart's defaults, with
    WIDENED_NAMESPACE at `privileged`), so the API server refuses hostile pod templates."""
    out = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    assert out.returncode == 0, out.stderr
    show = [arg for template in POD_POLICY_TEMPLATES for arg in ("--show-only", template)]
    rendered = run_helm(
        "template",
        "berth-suite",
        str(CHART),
        *show,
        values={"podPolicy": {"namespaces": {WIDENED_NAMESPACE: "privileged"}}},
    )
    assert rendered.returncode == 0, rendered.stderr
    out = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=rendered.stdout)
    assert out.returncode == 0, out.stderr
    name = f"{PLURAL}.{GROUP}"
    wait_for(
        lambda: (
            kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=5s").returncode
            == 0
        ),
        timeout=60,
        what=f"{name} Established",
    )
    # Discovery can lag Established by a moment; kubectl get must know the resource.
    wait_for(lambda: kubectl("get", "bt", "-A").returncode == 0, timeout=30, what="bt discovery")
    # The API server loads admission policies a moment after they are created.
    hostile = yaml.safe_dump(manifest("pod-policy-probe", podTemplate={"spec": {"hostPID": True}}))
    wait_for(
        lambda: (
            "spec.podTemplate.spec.hostPID"
            in kubectl(
                "create", "--dry-run=server", "-n", "default", "-f", "-", stdin=hostile
            ).stderr
        ),
        timeout=30,
        what="pod policy enforced",
    )
    return name


@pytest.fixture(scope="session")
def widened_namespace(api: client.ApiClient, crd: str) -> str:
    """WIDENED_NAMESPACE (Pod Security `restricted` like every test namespace), made once and
    kept: tests put uniquely named BertTrainings in it and delete them."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": WIDENED_NAMESPACE, "labels": NAMESPACE_LABELS}})
    except ApiException as error:
        if error.status != 409:
            raise
    wait_for(
        lambda: core.read_namespaced_service_account("default", WIDENED_NAMESPACE),
        timeout=30,
        what=f"ServiceAccount default in {WIDENED_NAMESPACE}",
    )
    return WIDENED_NAMESPACE


class Operator:
    """`berth-operator --namespace NS` as a subprocess, logging to a file; `env` adds to its
    environment (e.g. POD_NAME, which names a replica in its leader election identity)."""

    def __init__(
        self,
        namespace: str,
        log: Path,
        extra: list[str],
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.namespace, self.log, self.extra = namespace, log, extra
        self.kubeconfig, self.env = kubeconfig, env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port = free_port()
        self.metrics_port = free_port()

    def start(self) -> Operator:
        argv = [
            str(REPO / ".venv" / "bin" / "berth-operator"),
            "--namespace",
            self.namespace,
            "--reconcile-interval",
            "0.5",
            "--progress-interval",
            "1",
            "--liveness-port",
            str(self.liveness_port),
            "--metrics-port",
            str(self.metrics_port),
            "--default-image",
            "berth-trainer:test",
            "--log-level",
            "DEBUG",
            *self.extra,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # no orphan if pytest dies
                env={
                    **os.environ,
                    **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
                    **self.env,
                },
                start_new_session=True,
            )
        return self

    def metric(self, name: str) -> float:
        """The operator's own metric `name` from its /metrics, summed over its labels."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def operator_factory(
    namespace: str, crd: str, api: client.ApiClient, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    """Start operators watching `namespace` (admin credentials unless a kubeconfig is given);
    at teardown delete every BertTraining while one
    still runs (its finalizer needs it), stop them, and print the log (shown on failure)."""
    log = tmp_path / "operator.log"
    started: list[Operator] = []

    def make(*extra: str, kubeconfig: Path | None = None) -> Operator:
        op = Operator(namespace, log, list(extra), kubeconfig).start()
        started.append(op)
        return op

    yield make
    custom = client.CustomObjectsApi(api)
    try:
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        wait_for(
            lambda: (
                not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            ),
            timeout=30,
            what="BertTrainings deleted",
        )
    except (AssertionError, ApiException):
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
            "items"
        ]:
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )
    finally:
        for op in started:
            op.stop()
        if log.exists():
            sys.stdout.write(f"--- operator log {log} (tail) ---\n")
            sys.stdout.write("\n".join(log.read_text(errors="replace").splitlines()[-200:]))


@pytest.fixture
def operator(operator_factory: Callable[..., Operator]) -> Operator:
    return operator_factory()


class Trainings:
    """BertTrainings and their pods in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return result

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, body
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} phase {phase} (status)",
        )

    def wait_finished(self, name: str, timeout: float) -> dict[str, Any]:
        """The status once the phase is Succeeded or Failed."""
        return wait_for(
            lambda: (s := self.status(name)).get("phase") in ("Succeeded", "Failed") and s,
            timeout=timeout,
            interval=1,
            what=f"{name} finished",
        )

    def pods(self, name: str, alive_only: bool = True) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"berth.dev/training={name}"
        ).items
        return sorted(
            (p for p in pods if not (alive_only and p.metadata.deletion_timestamp)),
            key=lambda p: p.metadata.name,
        )

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [
            e
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.name == name and e.involved_object.kind == "BertTraining"
        ]


@pytest.fixture
def trainings(api: client.ApiClient, namespace: str) -> Trainings:
    return Trainings(api, namespace)


def manifest(name: str, workers: int = 3, **spec: Any) -> dict[str, Any]:
    """A small valid BertTraining; keyword arguments override spec fields."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BertTraining",
        "metadata": {"name": name},
        "spec": {
            "task": "pretraining",
            "model": {"size": "tiny"},
            "vocabulary": "gs://berth-test/vocab.txt",
            "data": {"train": "gs://berth-test/train/*.txt"},
            "training": {"globalBatchSize": 48, "sequenceLength": 64, "steps": 100},
            "checkpoint": {"dir": "gs://berth-test/ckpt"},
            "output": {"dir": "gs://berth-test/out"},
            "workers": workers,
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        },
    }
    body["spec"].update(spec)
    return body


TRAINER_METRICS = """# HELP berth_train_step Optimizer steps done.
# TYPE berth_train_step gauge
berth_train_step 120.0
# TYPE berth_train_total_steps gauge
berth_train_total_steps 1000.0
# TYPE berth_train_loss gauge
berth_train_loss 2.5
# TYPE berth_train_examples_per_second gauge
berth_train_examples_per_second 320.0
# TYPE berth_last_checkpoint_step gauge
berth_last_checkpoint_step 100.0
# TYPE berth_validation_step gauge
berth_validation_step 100.0
# TYPE berth_validation gauge
berth_validation{{metric="accuracy"}} 0.41234
berth_validation{{metric="loss"}} 3.5
# TYPE berth_trainer_info gauge
berth_trainer_info{{namespace="{namespace}",restart="{restart}",training="{training}",\
worker="0"}} 1.0
"""


def _metrics_handler(body: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/metrics"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body if found else b"")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def metrics_server() -> Iterator[Callable[..., ThreadingHTTPServer]]:
    """Serve the trainer's metrics on <pod IP>:9090 (KWOK pod IPs are loopback), labelled as
    worker 0 of `training` in `namespace` and group restart `restart`."""
    servers: list[ThreadingHTTPServer] = []

    def serve(ip: str, namespace: str, training: str, restart: int = 0) -> ThreadingHTTPServer:
        body = TRAINER_METRICS.format(namespace=namespace, training=training, restart=restart)
        server = ThreadingHTTPServer((ip, 9090), _metrics_handler(body.encode()))
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


#: The claim of the real node's data volume (the quickstart corpus in; shards, checkpoints and
#: model out).
DATA_CLAIM = "data"


@pytest.fixture
def node(kubeconfig: str) -> RealNode:
    """The real node; fails on a `--kwok-only` cluster (`make test` has the node)."""
    return RealNode.from_cluster()


@pytest.fixture
def volume(api: client.ApiClient, node: RealNode, namespace: str) -> Iterator[Path]:
    """The quickstart corpus on a claimed volume `DATA_CLAIM` of the real node."""
    with node.claimed_corpus(api, namespace, DATA_CLAIM) as path:
        yield path
