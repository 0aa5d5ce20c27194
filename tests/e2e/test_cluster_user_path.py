"""The user's path on the real node, no shortcuts: `helm install` → `kubectl apply` → a model.

The operator runs as a pod from the built operator image under the chart's ServiceAccount and
RBAC (in-cluster configuration); the workers run the built trainer image as real containers on
the real kubelet node (containerd, runc, the CNI bridge), find each other through the headless
Service's DNS names in TF_CONFIG (CoreDNS) and train together under MultiWorkerMirroredStrategy.
Data goes in and the model comes out through a hostPath PersistentVolume on the node, claimed in
a namespace that enforces Pod Security `restricted`. Nothing is faked.
The chart is installed with Kueue on (`kueue.enabled`): trainings without the queue label run
as ever, and one pair of labelled trainings shows preemption by a real Kueue end to end.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from berth_operator.builders import METRICS_PORT, TF_PORT
from tests.conftest import delete_namespace, new_namespace
from tests.support.kueue import PRIORITY_LABEL, QUEUE_LABEL, Kueue
from tests.support.netprobe import probe_result, start_probe
from tests.support.realnode import RealNode
from tests.support.tiny import checkpoint_steps
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "berth"
#: The claim of the data volume in the test namespace.
CLAIM = "data"
#: The release (its cluster-scoped objects are named after it: one per test session).
RELEASE = f"berth-{uuid.uuid4().hex[:6]}"


def run(
    *argv: str, timeout: float = 180, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    return run("kubectl", *args)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return run(str(REPO / ".cluster" / "bin" / "helm"), *args, timeout=300)


@pytest.fixture(scope="module")
def node(kubeconfig: str) -> RealNode:
    return RealNode.from_cluster()


@pytest.fixture(scope="module")
def namespace(api: client.ApiClient) -> Iterator[str]:
    """One namespace for the module: its tests share the release installed there."""
    name = new_namespace(api)
    yield name
    delete_namespace(api, name)


@pytest.fixture(scope="module")
def volume(api: client.ApiClient, node: RealNode, namespace: str) -> Iterator[Path]:
    """The corpus on the node (this machine), claimed in `namespace` as CLAIM; the pods name
    only the claim."""
    with node.claimed_corpus(api, namespace, CLAIM) as path:
        yield path


@pytest.fixture(scope="module")
def release(node: RealNode, namespace: str) -> Iterator[str]:
    """The chart, installed as a user would, with the built images; the operator runs on the
    real node. Uninstalled at the end (the last test checks that leaves nothing running)."""
    operator, trainer = node.image("operator"), node.image("trainer")
    placement = node.placement()
    result = helm(
        "install", RELEASE, str(CHART),
        "--namespace", namespace,
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"image.repository={operator.rsplit(':', 1)[0]}",
        "--set", f"image.tag={operator.rsplit(':', 1)[1]}",
        "--set", "image.pullPolicy=Never",
        "--set", f"trainer.image.repository={trainer.rsplit(':', 1)[0]}",
        "--set", f"trainer.image.tag={trainer.rsplit(':', 1)[1]}",
        "--set", "progressInterval=1",
        "--set", "kueue.enabled=true",
        "--set-json", f"nodeSelector={json.dumps(placement['nodeSelector'])}",
        "--set-json", f"tolerations={json.dumps(placement['tolerations'])}",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stdout + result.stderr + operator_log(namespace)
        yield RELEASE
    finally:  # a failed install leaves its cluster-scoped objects too
        helm("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "60s")


def operator_log(namespace: str) -> str:
    out = kubectl(  # every replica: the standby's log says it waits for the Lease
        "logs", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}",
        "--prefix", "--tail=60",
    )  # fmt: skip
    return f"\n--- operator log ---\n{out.stdout}{out.stderr}"


def manifest(name: str, node: RealNode, steps: int, **spec: Any) -> dict[str, Any]:
    """A tiny 2-worker pre-training; /data is the claim CLAIM (corpus in, model out)."""
    return node.tiny_training(name, steps, CLAIM, **spec)


def apply(body: dict[str, Any], namespace: str) -> None:
    out = run(
        "kubectl", "apply", "-n", namespace, "-f", "-", timeout=60, stdin=yaml.safe_dump(body)
    )
    assert out.returncode == 0, out.stderr


def status(namespace: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "bt", name, "-n", namespace, "-o", "json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout).get("status") or {})


def wait_phase(namespace: str, name: str, phase: str, timeout: float = 360) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        current = status(namespace, name)
        if current.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"{name} failed: {current.get('message')}")
        return current if current.get("phase") == phase else None

    try:
        return wait_for(done, timeout=timeout, interval=1, what=f"{name} {phase}")
    except AssertionError as error:
        raise AssertionError(f"{error}{operator_log(namespace)}") from None


def pod_log(namespace: str, pod: str) -> str:
    out = kubectl("logs", "-n", namespace, pod)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_helm_install_apply_train_and_export(
    api: client.ApiClient, release: str, node: RealNode, namespace: str, volume: Path
) -> None:
    steps = 500
    # Validated before the first step and after the last (status.validation, column Metric).
    data = {"train": "/data/corpus/corpus-*.txt", "validation": "/data/corpus/corpus-1.txt"}
    apply(manifest("tiny", node, steps=steps, data=data), namespace)

    def row_while_running() -> list[str] | None:
        """`kubectl get bt` once the in-cluster operator has scraped worker 0 while it trains."""
        progress = status(namespace, "tiny").get("progress") or {}
        if not progress.get("examplesPerSecond"):
            return None
        row = kubectl("get", "bt", "tiny", "-n", namespace).stdout.splitlines()[1].split()
        return row if row[1] == "Running" else None

    row = wait_for(row_while_running, timeout=300, interval=0.5, what="progress while Running")
    # NAME PHASE WORKERS STEP % LOSS EXAMPLES/S METRIC (the validation before the first step)
    assert row[:3] == ["tiny", "Running", "2/2"] and row[3].endswith(f"/{steps}"), row
    assert int(row[3].split("/")[0]) > 0 and 0 <= int(row[4]) < 100, row
    assert float(row[5]) > 0 and float(row[6]) > 0 and row[7] == "acc", row
    assert_workers_isolated(api, node, namespace, "tiny")

    final = wait_phase(namespace, "tiny", "Succeeded")
    # The last scrape may precede the last steps: the final figures come from worker 0's
    # termination message, in the same status write as the phase.
    assert final["progress"]["step"] == final["progress"]["totalSteps"] == steps, final
    assert final["progress"]["percent"] == 100 and final["progress"]["etaSeconds"] == 0, final
    metrics = json.loads((volume / "tiny" / "model" / "metrics.json").read_text())
    assert metrics["steps"] == steps
    assert final["validation"]["step"] == steps, final
    validation = {m["name"]: m["value"] for m in final["validation"]["metrics"]}
    assert validation["accuracy"] == pytest.approx(metrics["validation_accuracy"], rel=1e-5)
    assert final["validation"]["summary"] == f"acc {metrics['validation_accuracy']:.3f}"

    # Worker 1 may still be exiting when worker 0's success lands (1/2): it is left to finish,
    # and the column drops to 0/2 once the kubelet reports it done.
    def row_when_all_exited() -> list[str] | None:
        row = kubectl("get", "bt", "tiny", "-n", namespace).stdout.splitlines()[1].split()
        return row if row[2] == "0/2" else None

    row = wait_for(row_when_all_exited, timeout=60, interval=0.5, what="0/2 ready after success")
    assert row[:2] == ["tiny", "Succeeded"] and row[3:5] == [f"{steps}/{steps}", "100"], row
    assert row[7:9] == final["validation"]["summary"].split(), row

    # The workers met through the headless Service's DNS names and trained as one group.
    pod = json.loads(kubectl("get", "pod", "tiny-worker-1", "-n", namespace, "-o", "json").stdout)
    assert pod["spec"]["nodeName"] == node.name
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert json.loads(env["TF_CONFIG"])["cluster"]["worker"] == [
        f"tiny-worker-{i}.tiny.{namespace}.svc:2222" for i in range(2)
    ]
    for index in range(2):
        assert "MultiWorkerMirroredStrategy(2 workers)" in pod_log(
            namespace, f"tiny-worker-{index}"
        )

    # The exported SavedModel, written by the container onto the node, fills in a [MASK].
    out = run(
        str(REPO / ".venv" / "bin" / "berth-trainer"),
        "predict", "--model", str(volume / "tiny" / "model"), "the cat [MASK] the ball .",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (answer,) = json.loads(out.stdout)
    (mask,) = answer["masks"]
    assert mask["position"] == 3 and mask["top_k"][0]["token"] not in ("", "[MASK]")


def assert_workers_isolated(
    api: client.ApiClient, node: RealNode, namespace: str, training: str
) -> None:
    """While `training` trains: its NetworkPolicy (the operator's, owned by the training) is
    enforced on the node (kube-network-policies), so a pod of another namespace and a pod
    labelled as another training's worker get no connection to worker 0's TF port (gRPC that
    runs any graph it is sent) or metrics port: their SYNs are dropped (a timeout, not a
    refusal). The in-cluster operator, allowed, keeps reading progress (the caller's checks)."""
    policy = json.loads(
        kubectl("get", "networkpolicy", training, "-n", namespace, "-o", "json").stdout
    )
    (owner,) = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("BertTraining", training, True)
    core = client.CoreV1Api(api)
    address = core.read_namespaced_pod(f"{training}-worker-0", namespace).status.pod_ip
    other_namespace = new_namespace(api)
    another_training = {"berth.dev/training": "other", "berth.dev/role": "worker"}
    probes = [(other_namespace, "probe", {}), (namespace, "probe", another_training)]
    try:
        for where, name, labels in probes:
            start_probe(core, node, where, name, address, [TF_PORT, METRICS_PORT], labels)
        found = {where: probe_result(core, where, name) for where, name, _ in probes}
    finally:
        delete_namespace(api, other_namespace)
    closed = {TF_PORT: "timeout", METRICS_PORT: "timeout"}
    assert found == {other_namespace: closed, namespace: closed}, (
        found,
        status(namespace, training).get("phase"),
    )


def test_killed_worker_container_restarts_the_group_and_resumes(
    release: str, node: RealNode, namespace: str, volume: Path, tmp_path: Path
) -> None:
    steps = 300
    apply(manifest("resume", node, steps=steps), namespace)
    # `kubectl berth logs -f --all` (the plugin on PATH) follows the training from its start,
    # across the group restart, and ends by itself once it Succeeded.
    followed = tmp_path / "kubectl-berth-logs.txt"
    with followed.open("w") as out:
        follow = subprocess.Popen(
            ["kubectl", "berth", "logs", "resume", "--all", "-f", "-n", namespace],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        wait_for(
            lambda: any(s >= 20 for s in checkpoint_steps(volume / "resume" / "ckpt")),
            timeout=300,
            interval=0.2,
            what="a checkpoint at step >= 20 on the node",
        )
        killed = node.kill_container(namespace, "resume-worker-1")
        final = wait_phase(namespace, "resume", "Succeeded")
        assert follow.wait(timeout=120) == 0, follow.communicate()[1]
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert final["restarts"] == 1, final
    lines = followed.read_text().splitlines()
    (restart,) = (i for i, line in enumerate(lines) if line.startswith("--- group restart 1: "))
    assert "worker 1 (resume-worker-1) failed: exit code 137" in lines[restart], lines[restart]
    before, after = lines[:restart], lines[restart + 1 :]
    for index in (0, 1):
        assert any(line.startswith(f"[worker-{index} r0] ") for line in before), before[-20:]
        assert any(line.startswith(f"[worker-{index} r1] ") for line in after), after[:20]
    assert not [line for line in before if " r1] " in line[:16]], before
    assert not [line for line in after if " r0] " in line[:16]], after
    assert any(line.startswith("[worker-0 r1] ") and '"msg": "resumed"' in line for line in after)
    # The trainer's own account: the exported metrics and worker 0's log after the restart.
    metrics = json.loads((volume / "resume" / "model" / "metrics.json").read_text())
    assert metrics["steps"] == steps
    log = pod_log(namespace, "resume-worker-0")
    resumed = [json.loads(line) for line in log.splitlines() if '"msg": "resumed"' in line]
    assert resumed and resumed[0]["step"] >= 20, log[-3000:]
    # The group was recreated: worker 1 is a new pod with a new container; the killed one
    # never ran again.
    pod = json.loads(kubectl("get", "pod", "resume-worker-1", "-n", namespace, "-o", "json").stdout)
    assert pod["metadata"]["labels"]["berth.dev/restart"] == "1"
    assert killed not in pod["status"]["containerStatuses"][0]["containerID"]
    assert killed not in node.running_containers(namespace)


def test_gpu_request_on_a_node_without_a_usable_gpu_fails_fast(
    release: str, node: RealNode, namespace: str, volume: Path
) -> None:
    """A pod that gets `nvidia.com/gpu` but runs the CPU image exits 6, and the reason reaches
    status.message. The node advertises one GPU the way a device plugin would (an extended
    resource in its status); TensorFlow inside the container finds none."""
    with node.advertised("nvidia.com/gpu", "1"):
        body = manifest(
            "gpu",
            node,
            steps=40,
            workers=1,
            resources={"limits": {"nvidia.com/gpu": 1}},
            runPolicy={"restartPolicy": "ExitCode", "backoffLimit": 2},
        )
        apply(body, namespace)
        final = wait_phase(namespace, "gpu", "Failed")
    assert final["restarts"] == 0, final
    message = final["message"]
    assert "exit code 6" in message, message
    assert "requests nvidia.com/gpu: 1 but TensorFlow sees 0 GPU(s)" in message, message
    assert "berth-trainer:<version>-gpu" in message, message
    assert not (volume / "gpu" / "ckpt").exists(), "it trained before failing"


@pytest.fixture(scope="module")
def kueue(api: client.ApiClient, node: RealNode, namespace: str) -> Iterator[Kueue]:
    objects = Kueue(api, namespace)
    yield objects
    objects.cleanup()


def test_kueue_preempts_a_training_which_checkpoints_and_resumes_after_readmission(
    release: str, node: RealNode, namespace: str, volume: Path, kueue: Kueue
) -> None:
    """Two trainings of 2 x 0.5 CPU in a ClusterQueue of 1 CPU on the real node: the high
    priority one preempts the running low one, whose workers get SIGTERM and save a checkpoint
    (periodic checkpoints are off: any checkpoint comes from SIGTERM). Low goes back to Queued
    without counting a restart, is admitted again once high finished, and resumes at that step."""
    placement = node.placement()
    queue = kueue.queue(
        quota="1",
        resource="cpu",
        preemption=True,
        node_labels=placement["nodeSelector"],
        tolerations=placement["tolerations"],
    )

    def queued(name: str, steps: int, priority: str) -> dict[str, Any]:
        body = manifest(
            name,
            node,
            steps=steps,
            resources={"requests": {"cpu": "500m"}},
            runPolicy={"restartPolicy": "OnFailure", "backoffLimit": 0},
        )
        body["spec"]["checkpoint"]["everySteps"] = 100_000
        body["metadata"]["labels"] = {QUEUE_LABEL: queue, PRIORITY_LABEL: priority}
        return body

    steps = 400
    apply(queued("low", steps, kueue.priority("low", 100)), namespace)
    wait_for(
        lambda: (status(namespace, "low").get("progress") or {}).get("step", 0) >= 20,
        timeout=300,
        interval=0.5,
        what="low at step >= 20",
    )
    apply(queued("high", 40, kueue.priority("high", 1000)), namespace)
    held = wait_phase(namespace, "low", "Queued", timeout=120)
    assert "Preempted" in held["message"], held
    row = kubectl("get", "bt", "low", "-n", namespace).stdout.splitlines()[1].split()
    assert row[1] == "Queued" and queue in row, row
    saved = wait_for(
        lambda: checkpoint_steps(volume / "low" / "ckpt"),
        timeout=60,
        what="low's SIGTERM checkpoint on the node",
    )
    assert saved[-1] >= 20, saved

    wait_phase(namespace, "high", "Succeeded")
    final = wait_phase(namespace, "low", "Succeeded")
    assert final.get("restarts", 0) == 0, final
    metrics = json.loads((volume / "low" / "model" / "metrics.json").read_text())
    assert metrics["steps"] == steps
    log = pod_log(namespace, "low-worker-0")
    resumed = [json.loads(line) for line in log.splitlines() if '"msg": "resumed"' in line]
    assert resumed and resumed[0]["step"] == saved[-1], log[-3000:]
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    requeued = [
        e
        for e in json.loads(events)["items"]
        if e["involvedObject"]["name"] == "low" and e["reason"] == "Requeued"
    ]
    assert requeued and "Preempted" in requeued[0]["message"], requeued


def test_uninstall_and_delete_leave_nothing_running(
    release: str, node: RealNode, namespace: str
) -> None:
    """Last: deleting the trainings and `helm uninstall` stop every container of the namespace."""
    assert node.container_ids(namespace), "nothing ran on the node to begin with"
    out = kubectl("delete", "bt", "--all", "-n", namespace, "--wait=true", "--timeout=120s")
    assert out.returncode == 0, out.stderr
    out = helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: not kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip(),
        timeout=120,
        what=f"no pods left in {namespace}",
    )
    wait_for(
        lambda: not node.running_containers(namespace),
        timeout=60,
        what=f"no container of {namespace} running on {node.name}",
    )
