"""`helm install charts/berth` into the real control plane, then train under the chart's RBAC.

The Deployment's own pod only "runs" on a KWOK node, so the operator that reconciles is started
here: the command line is read back from the installed Deployment, and the credentials are a
TokenRequest token of the chart's ServiceAccount, so every call goes through the chart's RBAC. A
permission the chart forgot shows up as a 403 in the operator's log or as a training that never
gets its children, and fails the test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from berth_operator.local.runner import die_with_parent, free_port
from tests.integration.conftest import WIDENED_NAMESPACE
from tests.support.apicount import service_account_kubeconfig
from tests.support.kueue import PRIORITY_LABEL, QUEUE_LABEL, Kueue
from tests.support.kwok import terminate_pod
from tests.support.podsecurity import NAMESPACE_LABELS
from tests.support.processes import stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "berth"
CRD = "berttrainings.berth.dev"
GROUP, VERSION, PLURAL = "berth.dev", "v1alpha1", "berttrainings"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".cluster" / "bin" / "helm"), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def watched_namespace(api: client.ApiClient, namespace: str) -> Iterator[str]:
    """A second namespace: the operator is installed in `namespace` and watches this one."""
    core = client.CoreV1Api(api)
    name = f"{namespace}-w"
    core.create_namespace({"metadata": {"name": name, "labels": NAMESPACE_LABELS}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def release(
    request: pytest.FixtureRequest, namespace: str, watched_namespace: str
) -> Iterator[dict[str, Any]]:
    """The chart installed in namespaced mode with `request.param` = (replicas, Kueue on);
    uninstalled after."""
    replicas, queueing = request.param
    name = f"berth-{uuid.uuid4().hex[:8]}"  # contains the chart name: objects are named `name`
    metrics_port, liveness_port = free_port(), free_port()
    result = helm(
        "install", name, str(CHART),
        "--namespace", namespace,
        "--set", f"watchNamespaces={{{watched_namespace}}}",
        "--set", f"metrics.port={metrics_port}",
        "--set", f"probes.port={liveness_port}",
        "--set", "reconcileInterval=1",
        "--set", "logLevel=debug",
        "--set", f"replicaCount={replicas}",
        "--set", f"kueue.enabled={str(queueing).lower()}",
        # Its pod-policy bindings apply cluster-wide: widen what the suite's own (the crd
        # fixture's) widen, or they would refuse other tests' manifests while it is installed.
        "--set", f"podPolicy.namespaces.{WIDENED_NAMESPACE}=privileged",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield {
        "name": name,
        "namespace": namespace,
        "output": result.stdout,
        "metrics_port": metrics_port,
        "liveness_port": liveness_port,
        "replicas": replicas,
        "kueue": queueing,
    }
    uninstall = helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s")
    assert uninstall.returncode == 0, uninstall.stderr


@contextlib.contextmanager
def operator_process(
    command: list[str], kubeconfig: Path, log: Path, namespace: str
) -> Iterator[None]:
    """Run the operator's command line locally with only the given kubeconfig's credentials,
    and the downward API's POD_NAME and POD_NAMESPACE (the release namespace) as a pod has."""
    executable = REPO / ".venv" / "bin" / command[0]
    assert executable.exists(), f"{executable} missing: `make venv` installs the operator"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "BERTH_"))}
    env.update(KUBECONFIG=str(kubeconfig), POD_NAME="local", POD_NAMESPACE=namespace)
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(executable), *command[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # no orphan if pytest dies
            env=env,
        )
    try:
        yield
    except AssertionError as error:
        tail = log.read_text()[-4000:]
        raise AssertionError(f"{error}\n--- operator log (tail) ---\n{tail}") from None
    finally:
        stop(process, grace=20)


def crd_established(api: client.ApiClient) -> bool:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    conditions = crd.status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def training(name: str, queue: str | None = None, priority: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BertTraining",
        "metadata": {"name": name},
        "spec": {
            "vocabulary": "gs://berth-test/vocab.txt",
            "data": {"train": "gs://berth-test/corpus/*.txt"},
            "output": {"dir": "gs://berth-test/out"},
            "checkpoint": {"dir": "gs://berth-test/ckpt"},
            "workers": 2,
            "runPolicy": {"ttlSecondsAfterFinished": 1},
        },
    }
    if queue:  # queued with Kueue: one CPU per worker, the resource its ClusterQueue covers
        body["metadata"]["labels"] = {QUEUE_LABEL: queue, PRIORITY_LABEL: str(priority)}
        body["spec"]["resources"] = {"limits": {"cpu": "1"}}
    return body


def reasons(core: client.CoreV1Api, namespace: str, name: str) -> set[str]:
    events = core.list_namespaced_event(namespace).items
    return {e.reason for e in events if e.involved_object.name == name}


@pytest.mark.parametrize(
    "release",
    # Leader election and the chart's RBAC for it in both; the one-replica chart differs only by
    # its PodDisruptionBudget (tests/unit/chart).
    [(2, False), (1, True)],
    indirect=True,
    ids=["two-replicas", "kueue"],
)
def test_helm_install_then_reconcile_with_the_charts_rbac(
    api: client.ApiClient,
    kubeconfig: str,
    release: dict[str, Any],
    watched_namespace: str,
    tmp_path: Path,
) -> None:
    name, namespace = release["name"], release["namespace"]
    assert f"rollout status deployment/{name}" in release["output"]  # NOTES: the next command
    assert "kubectl apply --namespace" in release["output"]

    apps = client.AppsV1Api(api)
    deployment = wait_for(
        lambda: apps.read_namespaced_deployment(name, namespace),
        timeout=60,
        what=f"Deployment {namespace}/{name}",
    )
    wait_for(lambda: crd_established(api), timeout=60, what=f"CRD {CRD} Established")

    pod_spec = deployment.spec.template.spec
    (container,) = pod_spec.containers
    command = [*container.command, *container.args]
    assert f"--namespace={watched_namespace}" in command
    assert f"--liveness-port={release['liveness_port']}" in command
    assert "--leader-elect" in command and f"--leader-election-id={name}" in command
    assert {e.name for e in container.env} == {"POD_NAME", "POD_NAMESPACE"}

    sa_kubeconfig = service_account_kubeconfig(
        api, kubeconfig, namespace, pod_spec.service_account_name, tmp_path / "sa.kubeconfig"
    )
    as_operator = config.new_client_from_config(config_file=str(sa_kubeconfig))
    # RBAC is really enforced for these credentials: secrets were never granted.
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(as_operator).list_namespaced_secret(watched_namespace)
    assert denied.value.status == 403
    # ...and the chart's Role is bound to them in the watched namespace only.
    with pytest.raises(ApiException) as elsewhere:
        client.CoreV1Api(as_operator).list_namespaced_pod(namespace)
    assert elsewhere.value.status == 403
    as_operator.close()

    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)

    def status() -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(
            GROUP, VERSION, watched_namespace, PLURAL, "tiny"
        )
        return dict(body.get("status") or {})

    def running_workers(restart: int) -> bool:
        pods = core.list_namespaced_pod(
            watched_namespace, label_selector="berth.dev/training=tiny,berth.dev/role=worker"
        ).items
        return len(pods) == 2 and all(
            p.metadata.labels.get("berth.dev/restart") == str(restart)
            and p.status.phase == "Running"
            and not p.metadata.deletion_timestamp
            for p in pods
        )

    queue = priority = None
    kueue = Kueue(api, watched_namespace)
    if release["kueue"]:
        assert "--kueue" in command
        queue = kueue.queue(quota=8, resource="cpu")
        priority = kueue.priority("normal", 10)
    log = tmp_path / "operator.log"
    with operator_process(command, sa_kubeconfig, log, namespace):
        # Create: ConfigMap, Service and pods created, status patched, events posted (with
        # Kueue: once its Workload, created by the operator, is admitted).
        custom.create_namespaced_custom_object(
            GROUP, VERSION, watched_namespace, PLURAL, training("tiny", queue, priority)
        )
        wait_for(lambda: running_workers(0), timeout=90, what="2 running workers")
        assert [s.metadata.name for s in core.list_namespaced_service(watched_namespace).items] == [
            "tiny"
        ]
        assert core.read_namespaced_config_map("tiny-config", watched_namespace).data
        wait_for(lambda: status().get("phase") == "Running", timeout=60, what="phase Running")
        wait_for(
            lambda: "CreatedWorkers" in reasons(core, watched_namespace, "tiny"),
            timeout=30,
            what="CreatedWorkers event on the training",
        )
        # The chart's probes hit kopf's liveness endpoint on the chart's port.
        url = f"http://127.0.0.1:{release['liveness_port']}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200

        # Leader election under the chart's RBAC: this operator holds (created, renews) the
        # chart's Lease in the release namespace; with two replicas, a PodDisruptionBudget.
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
        assert lease.spec.holder_identity.startswith("local_")
        budgets = client.PolicyV1Api(api).list_namespaced_pod_disruption_budget(namespace).items
        assert len(budgets) == (release["replicas"] > 1)

        # Group restart: pods deleted and recreated, the ConfigMap patched (it already exists).
        terminate_pod(core, watched_namespace, "tiny-worker-1", 137, reason="OOMKilled")
        wait_for(lambda: status().get("restarts") == 1, timeout=60, what="restarts=1")
        wait_for(lambda: running_workers(1), timeout=90, what="2 running workers of restart 1")

        # Success, then ttlSecondsAfterFinished: the operator deletes the training itself and
        # its finalizer lets go.
        for index in (1, 0):
            terminate_pod(core, watched_namespace, f"tiny-worker-{index}", 0)

        def gone() -> bool:
            try:
                status()
            except ApiException as error:
                return error.status == 404
            return False

        wait_for(gone, timeout=90, what="the finished training deleted by its TTL")
        if queue:  # finished, its finalizer dropped: the garbage collector took it
            wait_for(lambda: not kueue.workloads(), timeout=60, what="the Workload deleted")
    kueue.cleanup()

    text = log.read_text()
    forbidden = [line for line in text.splitlines() if "forbidden" in line.lower()]
    assert not forbidden, "operator hit RBAC denials:\n" + "\n".join(forbidden[:20])
