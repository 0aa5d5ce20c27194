"""Scale benchmark of the Berth operator on a KWOK control plane: API load, CPU, memory and
reaction times with hundreds of BertTrainings — prints markdown tables.

    .venv/bin/python bench/operator_scale.py                          # N=200, 60 s steady
    .venv/bin/python bench/operator_scale.py --trainings 20 --steady-seconds 20
    .venv/bin/python bench/operator_scale.py --scale-to 1000          # adds the 1000 x 4 run
    .venv/bin/python bench/operator_scale.py --operator-cmd \\
        "env PYTHONPATH=OTHER/operator/src:OTHER/trainer/src .venv/bin/python -m berth_operator.cli"

It starts its own control plane with `hack/cluster.py up` in --cluster-dir (default
`berth-bench-cluster` in the temp dir; BERTH_CLUSTER_DIR is set to it, so the tests' cluster is
untouched) and stops it at the end unless --keep-cluster. Everything is loopback. Extra KWOK
nodes (1000 pods each, no taints) are added so every worker pod fits; trainings ask for no
GPU. The operator runs as a subprocess (`--operator-cmd`, then `--namespace NS
--liveness-port P --metrics-port P --log-level INFO`, then every --operator-arg) under its own
ServiceAccount (cluster-admin, TokenRequest token in a kubeconfig), and a FlowSchema matching
only that ServiceAccount (precedence 500, priority level workload-low, where a ServiceAccount's
requests go anyway) lets the API server count the operator's requests itself. Progress goes to
stderr, the tables to stdout; every wait is bounded by --timeout.

What each figure means (items in the order they run: 4, 1, 2, 3, 6, then 5):

4. `kubectl apply -f` of one multi-document file of N trainings (4 workers each): wall time of
   the apply with the operator running, the same apply into a namespace no operator watches
   (before the operator starts; then deleted) and their ratio (each apply follows a
   `--dry-run=server` apply of the same file, so neither pays for a cold discovery cache); then
   the time from the apply's return (and from its start) until all 4N worker pods are Running
   and Ready (a pod watch), and until every training reports status.phase Running. "operator
   during catch-up" is the operator's request rate and CPU from the apply until all pods ran.
1. Steady state, all N x 4 Running, observed for --steady-seconds: the operator's API requests/s
   (delta of `apiserver_flowcontrol_dispatched_requests_total{flow_schema=<ours>}` summed over
   labels, from the API server's /metrics; a watch counts once, when it starts; `rejected` is
   `apiserver_flowcontrol_rejected_requests_total` for the same schema), its CPU-seconds per
   minute (utime+stime of every process in its session, /proc/<pid>/stat) and its memory
   (VmRSS at the end, VmHWM = peak, /proc/<pid>/status, summed over the session's processes).
2. Exit 137 of worker 1 of a Running 4-worker training (KWOK's kwok.berth.dev/exit-code
   annotation): time from the annotation patch until all 4 pods of the next restart
   (label berth.dev/restart = old + 1) are Running and Ready, from a pod watch; "created" is
   until those 4 pods merely exist. Repeated on --restart-runs different trainings.
3. A 32-worker training (--big-workers): time from the create call's return until all 32 pods
   exist, and until all are Running; --big-runs repetitions, each deleted afterwards (and
   the time until its pods are gone).
6. Delete-collection of the namespace's trainings (propagation Background): time until no
   training, pod, Service or ConfigMap labelled berth.dev/training is left (polled every
   0.25 s), with the time each kind emptied.
5. --scale-to M (0 skips): the same apply/Running/steady-state/delete with M trainings, then a
   table comparing requests/s, CPU and memory per training with the N run.

"load" beside each figure is os.getloadavg() (1/5/15 min) right after it was measured: the
machine's other work (the control plane, KWOK, this script) shows there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support, shared with the integration tests

from berth_operator.local.runner import die_with_parent, free_port  # noqa: E402
from tests.support.apicount import (  # noqa: E402
    admin_account,
    flow_schema,
    service_account_kubeconfig,
)

CRD = REPO / "crds" / "berth.dev_berttrainings.yaml"
GROUP, VERSION, PLURAL = "berth.dev", "v1alpha1", "berttrainings"
TRAINING_LABEL = "berth.dev/training"
RESTART_LABEL = "berth.dev/restart"
EXIT_CODE_ANNOTATION = "kwok.berth.dev/exit-code"
BENCH_LABEL = "berth.dev/bench"
NODE_PODS = 1000
STARTED = time.monotonic()
Pod = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - STARTED:7.1f}s] {message}\n")
    sys.stderr.flush()


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_s(seconds: float | None) -> str:
    return "timeout" if seconds is None else f"{seconds:.2f} s"


def median(values: list[float | None]) -> float | None:
    """Median of the runs; None (a timeout) when any run timed out."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def maximum(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def runs(values: list[float | None]) -> str:
    return ", ".join("timeout" if v is None else f"{v:.2f}" for v in values)


def training(name: str, workers: int) -> dict[str, Any]:
    """A small valid BertTraining (tests/integration/conftest.py manifest(), no GPU)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BertTraining",
        "metadata": {"name": name, "labels": {BENCH_LABEL: "true"}},
        "spec": {
            "task": "pretraining",
            "model": {"size": "tiny"},
            "vocabulary": "gs://berth-test/vocab.txt",
            "data": {"train": "gs://berth-test/train/*.txt"},
            # globalBatchSize must be divisible by the workers
            "training": {"globalBatchSize": 12 * workers, "sequenceLength": 64, "steps": 100},
            "checkpoint": {"dir": "gs://berth-test/ckpt"},
            "output": {"dir": "gs://berth-test/out"},
            "workers": workers,
        },
    }


def running_ready(pod: Pod) -> bool:
    status = pod.get("status") or {}
    return (
        not pod["metadata"].get("deletionTimestamp")
        and status.get("phase") == "Running"
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
    )


def alive(pod: Pod) -> bool:
    return not pod["metadata"].get("deletionTimestamp")


# ---------------------------------------------------------------------------------------------
# the control plane


class ControlPlane:
    """hack/cluster.py with BERTH_CLUSTER_DIR=<dir>, plus an admin API client."""

    def __init__(self, state: Path):
        self.state = state
        self.env = {**os.environ, "BERTH_CLUSTER_DIR": str(state)}
        self.kubeconfig = state / "kubeconfig"
        self.kubectl_path = "kubectl"
        self.api: client.ApiClient | None = None

    def cluster(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "hack" / "cluster.py"), *command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        log(f"control plane: hack/cluster.py up (state {self.state})")
        # KWOK nodes only: the real node belongs to the tests' cluster (one per machine).
        result = self.cluster("up", "--kwok-only")
        if result.returncode:
            sys.exit(f"error: control plane failed:\n{result.stdout}\n{result.stderr}")
        self.kubectl_path = str(self._cluster_module().binaries()["kubectl"])
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.api.configuration.connection_pool_maxsize = 8

    def _cluster_module(self) -> ModuleType:
        os.environ["BERTH_CLUSTER_DIR"] = str(self.state)
        spec = importlib.util.spec_from_file_location(
            "berth_bench_cluster", REPO / "hack" / "cluster.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def down(self) -> None:
        log("control plane: hack/cluster.py down")
        if self.api is not None:
            self.api.close()
        result = self.cluster("down", timeout=120)
        if result.returncode:
            log(f"cluster down failed: {result.stderr.strip()}")

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def raw_get(self, path: str, timeout: float = 60) -> bytes:
        """GET a non-resource path (e.g. /metrics) as the admin."""
        out = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), "get", "--raw", path],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(f"kubectl get --raw {path}: {out.stderr.decode(errors='replace')}")
        return out.stdout


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiException, OSError):
            if check():
                return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def setup_cluster(cp: ControlPlane, run: str, pods_needed: int) -> None:
    """CRD, extra KWOK nodes with room for `pods_needed` pods."""
    out = cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    if out.returncode:
        sys.exit(f"error: CRD apply failed: {out.stderr}")
    wait_until(
        "CRD Established",
        lambda: (
            cp.kubectl(
                "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=5s"
            ).returncode
            == 0
        ),
        60,
    )
    wait_until("bt discovery", lambda: cp.kubectl("get", "bt", "-A").returncode == 0, 30)
    count = max(1, -(-pods_needed // NODE_PODS))
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"kwok-bench-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    BENCH_LABEL: "true",
                    "kubernetes.io/hostname": f"kwok-bench-{i}",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": str(NODE_PODS)},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": str(NODE_PODS)},
            },
        }
        for i in range(count)
    ]
    out = cp.kubectl(
        "apply", "--server-side", "-f", "-", stdin="\n---\n".join(json.dumps(n) for n in nodes)
    )
    if out.returncode:
        sys.exit(f"error: node apply failed: {out.stderr}")

    def ready() -> bool:
        items = cp.core.list_node(label_selector=f"{BENCH_LABEL}=true").items
        return len(items) >= count and all(
            any(
                c.type == "Ready" and c.status == "True"
                for c in (n.status.conditions if n.status else None) or []
            )
            for n in items
        )

    wait_until(f"{count} bench KWOK nodes Ready", ready, 120)
    log(f"{count} extra KWOK node(s) of {NODE_PODS} pods Ready")


def wait_for_garbage_collector(cp: ControlPlane, namespace: str, timeout: float) -> None:
    """Until kube-controller-manager's garbage collector knows BertTraining owners.

    It finds new resource types by discovery every 30 s; children made before that fail in its
    queue ("unable to get REST mapping") and back off, which would make item 6 measure the
    collector's back-off instead of the deletion. A real cluster has the CRD long before."""
    deadline = time.monotonic() + timeout
    for attempt in range(10_000):
        name = f"gc-probe-{attempt}"
        owner = cp.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, training(name, 1)
        )
        child = f"{name}-child"
        reference = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BertTraining",
            "name": name,
            "uid": owner["metadata"]["uid"],
        }
        cp.core.create_namespaced_config_map(
            namespace, {"metadata": {"name": child, "ownerReferences": [reference]}}
        )
        cp.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        probe_end = time.monotonic() + 5
        while time.monotonic() < probe_end:
            try:
                cp.core.read_namespaced_config_map(child, namespace)
            except ApiException as error:
                if error.status == 404:
                    log(f"garbage collector knows BertTraining owners (probe {attempt + 1})")
                    return
                raise
            time.sleep(0.2)
        if time.monotonic() > deadline:
            sys.exit("error: the garbage collector never collected a BertTraining's child")


def create_namespace(cp: ControlPlane, name: str) -> None:
    cp.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={BENCH_LABEL: "true"}))
    )
    wait_until(
        f"ServiceAccount default in {name}",
        lambda: bool(cp.core.read_namespaced_service_account("default", name)),
        60,
    )


def operator_identity(cp: ControlPlane, system_ns: str, run: str, path: Path) -> str:
    """ServiceAccount + cluster-admin binding + a FlowSchema taking every request of it (watches
    too); writes a TokenRequest-token kubeconfig to `path`. Returns the FlowSchema's name."""
    account = "berth-operator"
    schema = f"berth-bench-{run}"
    admin_account(cp.core.api_client, system_ns, account, schema)
    client.FlowcontrolApiserverV1Api(cp.core.api_client).create_flow_schema(
        flow_schema(schema, system_ns, account, verbs=("*",))
    )
    service_account_kubeconfig(cp.core.api_client, str(cp.kubeconfig), system_ns, account, path)
    return schema


# ---------------------------------------------------------------------------------------------
# the operator process and what it costs


@dataclasses.dataclass
class Sample:
    """Cumulative counters at one moment."""

    at: float
    requests: float
    rejected: float
    ticks: int  # utime+stime (+ reaped children) of the operator's session, clock ticks


@dataclasses.dataclass
class Cost:
    """The operator's cost between two samples."""

    seconds: float
    requests: float
    rejected: float
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_minute(self) -> float:
        return self.cpu_seconds * 60 / self.seconds if self.seconds > 0 else 0.0


class Operator:
    def __init__(self, argv: list[str], kubeconfig: Path, log_path: Path):
        self.argv, self.kubeconfig, self.log_path = argv, kubeconfig, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, liveness_port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "BERTH_"))}
        env["KUBECONFIG"] = str(self.kubeconfig)
        log(f"operator: {shlex.join(self.argv)} (log {self.log_path})")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{liveness_port}/healthz"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"error: operator exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    log("operator: /healthz answers")
                    return
            time.sleep(0.5)
        log("operator: /healthz never answered in 90 s; going on")

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pids(self) -> list[int]:
        """Every live process in the operator's session (a wrapper command may fork)."""
        if self.proc is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
                if int(fields[3]) == self.proc.pid:
                    found.append(int(entry.name))
        return found

    def ticks(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        return total

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) summed over the session's processes, KiB."""
        rss = hwm = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        return rss, hwm


class Meter:
    """The API server's own count of the operator's requests, plus the operator's CPU."""

    def __init__(self, cp: ControlPlane, operator: Operator, flow_schema: str):
        self.cp, self.operator, self.flow_schema = cp, operator, flow_schema

    def _counters(self) -> tuple[float, float]:
        text = self.cp.raw_get("/metrics").decode(errors="replace")
        wanted = f'flow_schema="{self.flow_schema}"'
        dispatched = rejected = 0.0
        for line in text.splitlines():
            if wanted not in line:
                continue
            if line.startswith("apiserver_flowcontrol_dispatched_requests_total{"):
                dispatched += float(line.rsplit(" ", 1)[1])
            elif line.startswith("apiserver_flowcontrol_rejected_requests_total{"):
                rejected += float(line.rsplit(" ", 1)[1])
        return dispatched, rejected

    def sample(self) -> Sample:
        ticks = self.operator.ticks()
        at = time.monotonic()
        requests, rejected = self._counters()
        return Sample(at, requests, rejected, ticks)

    @staticmethod
    def cost(a: Sample, b: Sample) -> Cost:
        return Cost(
            seconds=b.at - a.at,
            requests=b.requests - a.requests,
            rejected=b.rejected - a.rejected,
            cpu_seconds=(b.ticks - a.ticks) / os.sysconf("SC_CLK_TCK"),
        )


# ---------------------------------------------------------------------------------------------
# watching pods


@dataclasses.dataclass
class Goal:
    """Done when the number of pods matching `match` is >= at_least (or <= at_most)."""

    name: str
    match: Callable[[Pod], bool]
    at_least: int | None = None
    at_most: int | None = None
    members: set[str] = dataclasses.field(default_factory=set)
    reached: float | None = None

    def met(self) -> bool:
        n = len(self.members)
        return (self.at_least is None or n >= self.at_least) and (
            self.at_most is None or n <= self.at_most
        )

    def progress(self) -> str:
        target = self.at_least if self.at_least is not None else self.at_most
        return f"{self.name} {len(self.members)}/{target}"


def response_lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line


class PodWatch:
    """Pods of one namespace and label selector: list once (prime), then watch from there."""

    def __init__(self, cp: ControlPlane, namespace: str, selector: str):
        self.cp, self.namespace, self.selector = cp, namespace, selector
        self.pods: dict[str, Pod] = {}
        self.resource_version = ""

    def prime(self) -> PodWatch:
        response: Any = self.cp.core.list_namespaced_pod(
            self.namespace,
            label_selector=self.selector,
            _preload_content=False,
            _request_timeout=120,
        )
        body = json.loads(response.data)
        self.pods = {p["metadata"]["name"]: p for p in body["items"]}
        self.resource_version = body["metadata"]["resourceVersion"]
        return self

    def _update(self, goals: list[Goal], name: str) -> None:
        pod = self.pods.get(name)
        for goal in goals:
            if pod is not None and goal.match(pod):
                goal.members.add(name)
            else:
                goal.members.discard(name)

    def wait(self, goals: list[Goal], t0: float, timeout: float) -> list[Goal]:
        """Watch until every goal is met or `timeout` (from now) passes; goal.reached is the
        time since `t0` at which it was first met (None: not within the timeout)."""
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()

        def rebuild() -> None:
            for goal in goals:
                goal.members.clear()
            for name in self.pods:
                self._update(goals, name)

        def check() -> bool:
            now = time.monotonic()
            for goal in goals:
                if goal.reached is None and goal.met():
                    goal.reached = now - t0
            return all(g.reached is not None for g in goals)

        rebuild()
        if check():
            return goals
        while time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            window = max(1, int(min(remaining, 60)))
            try:
                response: Any = self.cp.core.list_namespaced_pod(
                    self.namespace,
                    label_selector=self.selector,
                    watch=True,
                    allow_watch_bookmarks=True,
                    resource_version=self.resource_version,
                    timeout_seconds=window,
                    _preload_content=False,
                    _request_timeout=(10, window + 15),
                )
            except (ApiException, OSError) as error:
                log(f"  watch failed ({error}); retrying")
                time.sleep(0.5)
                continue
            try:
                for line in response_lines(response):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        log(f"  watch error {obj.get('code')}: relisting")
                        self.prime()
                        rebuild()
                        break
                    self.resource_version = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    if kind == "DELETED":
                        self.pods.pop(name, None)
                    else:
                        self.pods[name] = obj
                    self._update(goals, name)
                    if check():
                        return goals
                    now = time.monotonic()
                    if now > deadline:
                        break
                    if now - last_report > 15:
                        last_report = now
                        log("  " + ", ".join(g.progress() for g in goals))
            except Exception as error:  # a broken stream: resume from the last version
                log(f"  watch stream ended ({type(error).__name__}: {error}); resuming")
            finally:
                response.close()
        log("  gave up: " + ", ".join(g.progress() for g in goals))
        return goals


# ---------------------------------------------------------------------------------------------
# the measurements


@dataclasses.dataclass
class Row:
    item: str
    figure: str
    size: str
    value: str
    load: str = dataclasses.field(default_factory=load)


@dataclasses.dataclass
class Steady:
    trainings: int
    cost: Cost
    rss_kib: int
    hwm_kib: int
    load: str


class Bench:
    def __init__(self, args: argparse.Namespace, cp: ControlPlane, workdir: Path, run: str):
        self.args, self.cp, self.workdir, self.run = args, cp, workdir, run
        self.rows: list[Row] = []
        self.steady: list[Steady] = []
        self.meter: Meter | None = None
        self.operator: Operator | None = None

    def add(self, item: str, figure: str, size: str, value: str) -> None:
        row = Row(item, figure, size, value)
        self.rows.append(row)
        log(f"RESULT {item} {figure} [{size}]: {value} (load {row.load})")

    def manifest_file(self, count: int, prefix: str) -> Path:
        path = self.workdir / f"{prefix}-{count}.yaml"
        path.write_text(
            "\n---\n".join(
                json.dumps(training(f"{prefix}-{i:04d}", self.args.workers)) for i in range(count)
            )
        )
        return path

    def dry_run(self, namespace: str, path: Path) -> None:
        """`kubectl apply --dry-run=server` of the file: warms kubectl's discovery cache and the
        API server's validation before the timed apply; creates nothing."""
        warm = self.cp.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", str(path), timeout=self.args.timeout
        )
        if warm.returncode:
            raise RuntimeError(f"kubectl apply --dry-run=server failed: {warm.stderr[-2000:]}")

    def kubectl_apply(self, namespace: str, path: Path) -> float:
        """Wall time of `kubectl apply -f path`."""
        t0 = time.monotonic()
        out = self.cp.kubectl("apply", "-n", namespace, "-f", str(path), timeout=self.args.timeout)
        elapsed = time.monotonic() - t0
        if out.returncode:
            raise RuntimeError(f"kubectl apply failed: {out.stderr[-2000:]}")
        return elapsed

    def list_count(self, namespace: str, kind: str, selector: str | None) -> int:
        """How many objects of `kind` (limit=1: only "any left?" matters)."""
        kwargs: dict[str, Any] = {
            "limit": 1,
            "_preload_content": False,
            "_request_timeout": 30,
        }
        if selector:
            kwargs["label_selector"] = selector
        if kind == "trainings":
            response: Any = self.cp.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, **kwargs
            )
        elif kind == "pods":
            response = self.cp.core.list_namespaced_pod(namespace, **kwargs)
        elif kind == "services":
            response = self.cp.core.list_namespaced_service(namespace, **kwargs)
        else:
            response = self.cp.core.list_namespaced_config_map(namespace, **kwargs)
        return len(json.loads(response.data)["items"])

    def baseline_apply(self, count: int) -> float:
        """The apply of `count` trainings where no operator watches; deleted afterwards."""
        namespace = f"bb-{self.run}-noop-{count}"
        create_namespace(self.cp, namespace)
        path = self.manifest_file(count, "bt")
        log(f"item 4 baseline: kubectl apply of {count} trainings, no operator ({namespace})")
        self.dry_run(namespace, path)
        elapsed = self.kubectl_apply(namespace, path)
        self.cp.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        wait_until(
            "baseline trainings deleted",
            lambda: self.list_count(namespace, "trainings", None) == 0,
            self.args.timeout,
        )
        self.cp.core.delete_namespace(namespace)
        return elapsed

    def apply_and_run(self, namespace: str, count: int, baseline: float | None) -> Cost | None:
        """Item 4 (and 5's first half): apply `count` trainings, wait for all pods Running."""
        assert self.meter is not None
        size = f"{count}x{self.args.workers}"
        path = self.manifest_file(count, "bt")
        watch = PodWatch(self.cp, namespace, TRAINING_LABEL).prime()
        self.dry_run(namespace, path)
        before = self.meter.sample()
        log(f"item 4: kubectl apply of {count} trainings with the operator ({namespace})")
        started = time.monotonic()
        elapsed = self.kubectl_apply(namespace, path)
        t0 = time.monotonic()
        self.add("4", "kubectl apply of N trainings, operator running", size, fmt_s(elapsed))
        if baseline is not None:
            self.add("4", "the same apply, no operator", size, fmt_s(baseline))
            self.add("4", "apply time ratio (operator / none)", size, f"{elapsed / baseline:.2f}x")
        pods = count * self.args.workers
        (goal,) = watch.wait([Goal("running", running_ready, at_least=pods)], t0, self.args.timeout)
        self.add(
            "4",
            f"apply return -> all {pods} pods Running+Ready",
            size,
            f"{fmt_s(goal.reached)} ({fmt_s(goal.reached + t0 - started)} from apply start)"
            if goal.reached is not None
            else f"timeout ({goal.progress()})",
        )
        catch_up = Meter.cost(before, self.meter.sample())
        self.add(
            "4",
            "operator during catch-up (apply -> pods Running)",
            size,
            f"{catch_up.rps:.1f} req/s, {catch_up.cpu_per_minute:.1f} CPU-s/min "
            f"over {catch_up.seconds:.0f} s ({catch_up.requests:.0f} requests)",
        )
        phase = self.wait_phase_running(namespace, count, t0)
        self.add("4", "apply return -> all trainings phase Running", size, phase)
        return catch_up

    def wait_phase_running(self, namespace: str, count: int, t0: float) -> str:
        deadline = time.monotonic() + self.args.timeout
        last = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiException, OSError):
                response: Any = self.cp.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _preload_content=False, _request_timeout=60
                )
                items = json.loads(response.data)["items"]
                last = sum((i.get("status") or {}).get("phase") == "Running" for i in items)
                if last >= count:
                    return fmt_s(time.monotonic() - t0)
            time.sleep(1)
        return f"timeout ({last}/{count})"

    def steady_state(self, count: int) -> Steady:
        """Item 1: the operator's requests/s, CPU and memory with everything Running."""
        assert self.meter is not None and self.operator is not None
        size = f"{count}x{self.args.workers}"
        log(f"item 1: steady state for {self.args.steady_seconds:.0f} s")
        a = self.meter.sample()
        time.sleep(self.args.steady_seconds)
        b = self.meter.sample()
        cost = Meter.cost(a, b)
        rss, hwm = self.operator.memory_kib()
        steady = Steady(count, cost, rss, hwm, load())
        self.steady.append(steady)
        self.add(
            "1",
            f"operator API requests/s (steady, {cost.seconds:.0f} s)",
            size,
            f"{cost.rps:.1f} req/s ({cost.rps / count:.3f} per training; "
            f"{cost.requests:.0f} requests, {cost.rejected:.0f} rejected)",
        )
        self.add(
            "1",
            "operator CPU (steady)",
            size,
            f"{cost.cpu_per_minute:.1f} CPU-s/min ({cost.cpu_per_minute / count:.3f} per training)",
        )
        self.add(
            "1", "operator memory", size, f"RSS {rss / 1024:.0f} MiB, peak {hwm / 1024:.0f} MiB"
        )
        return steady

    def group_restarts(self, namespace: str, names: list[str]) -> None:
        """Item 2: exit 137 of worker 1 -> every pod of the next restart Running+Ready."""
        running: list[float | None] = []
        created: list[float | None] = []
        for name in names:
            watch = PodWatch(self.cp, namespace, f"{TRAINING_LABEL}={name}").prime()
            victim = f"{name}-worker-1"
            pod = watch.pods.get(victim)
            if pod is None or not running_ready(pod):
                log(f"item 2: {victim} is not Running; skipped")
                continue
            restart = int(pod["metadata"]["labels"].get(RESTART_LABEL, "0")) + 1
            workers = self.args.workers

            def of_restart(p: Pod, restart: int = restart) -> bool:
                return alive(p) and p["metadata"]["labels"].get(RESTART_LABEL) == str(restart)

            def new_running(p: Pod, restart: int = restart) -> bool:
                return of_restart(p, restart) and running_ready(p)

            log(f"item 2: exit 137 on {victim}")
            self.cp.core.patch_namespaced_pod(
                victim, namespace, {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "137"}}}
            )
            t0 = time.monotonic()
            made, ran = watch.wait(
                [
                    Goal("created", of_restart, at_least=workers),
                    Goal("running", new_running, at_least=workers),
                ],
                t0,
                self.args.timeout,
            )
            created.append(made.reached)
            running.append(ran.reached)
            log(f"  created {fmt_s(made.reached)}, running {fmt_s(ran.reached)}")
        size = f"{len(running)} runs, {self.args.trainings}x{self.args.workers} running"
        self.add(
            "2",
            "exit 137 -> whole new group Running+Ready: median (max)",
            size,
            f"{fmt_s(median(running))} ({fmt_s(maximum(running))}); runs: {runs(running)}",
        )
        self.add(
            "2",
            "exit 137 -> new group's pods all exist: median (max)",
            size,
            f"{fmt_s(median(created))} ({fmt_s(maximum(created))}); runs: {runs(created)}",
        )

    def big_trainings(self, namespace: str) -> None:
        """Item 3: a --big-workers training: create -> all its pods exist / Running."""
        workers = self.args.big_workers
        exist: list[float | None] = []
        running: list[float | None] = []
        gone: list[float | None] = []
        for k in range(self.args.big_runs):
            name = f"big-{k}"
            watch = PodWatch(self.cp, namespace, f"{TRAINING_LABEL}={name}").prime()
            log(f"item 3: create {name} ({workers} workers)")
            self.cp.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, training(name, workers)
            )
            t0 = time.monotonic()
            made, ran = watch.wait(
                [
                    Goal("exist", alive, at_least=workers),
                    Goal("running", running_ready, at_least=workers),
                ],
                t0,
                self.args.timeout,
            )
            exist.append(made.reached)
            running.append(ran.reached)
            log(f"  exist {fmt_s(made.reached)}, running {fmt_s(ran.reached)}; deleting")
            self.cp.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
            )
            t1 = time.monotonic()
            (empty,) = watch.wait(
                [Goal("gone", lambda p: True, at_most=0)], t1, min(self.args.timeout, 300)
            )
            gone.append(empty.reached)
        size = f"{workers} workers, {len(exist)} runs, {self.args.trainings}x4 running"
        self.add(
            "3",
            f"create -> all {workers} pods exist: median",
            size,
            f"{fmt_s(median(exist))}; runs: {runs(exist)}",
        )
        self.add(
            "3",
            f"create -> all {workers} pods Running: median",
            size,
            f"{fmt_s(median(running))}; runs: {runs(running)}",
        )
        self.add(
            "3",
            f"delete -> all {workers} pods gone: median",
            size,
            f"{fmt_s(median(gone))}; runs: {runs(gone)}",
        )

    def delete_all(self, namespace: str, count: int) -> None:
        """Item 6: delete-collection of the trainings -> no labelled child left."""
        size = f"{count}x{self.args.workers}"
        log(f"item 6: delete collection of {count} trainings")
        kinds = ("trainings", "pods", "services", "configmaps")
        emptied: dict[str, float] = {}
        self.cp.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, propagation_policy="Background"
        )
        t0 = time.monotonic()
        deadline = t0 + self.args.timeout
        last_report = t0
        while time.monotonic() < deadline and len(emptied) < len(kinds):
            for kind in kinds:
                if kind in emptied:
                    continue
                selector = None if kind == "trainings" else TRAINING_LABEL
                with contextlib.suppress(ApiException, OSError):
                    if self.list_count(namespace, kind, selector) == 0:
                        emptied[kind] = time.monotonic() - t0
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                log(f"  emptied so far: {emptied}")
            time.sleep(0.25)
        detail = ", ".join(f"{k} {fmt_s(emptied.get(k))}" for k in kinds)
        total = max(emptied.values()) if len(emptied) == len(kinds) else None
        self.add("6", "delete collection -> all children gone", size, f"{fmt_s(total)} ({detail})")


# ---------------------------------------------------------------------------------------------
# output


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def scale_table(a: Steady, b: Steady) -> str:
    def ratio(x: float, y: float) -> str:
        return f"{y / x:.2f}x" if x else "-"

    def per(value: float, n: int) -> float:
        return value / n if n else 0.0

    rows = [
        ["requests/s", f"{a.cost.rps:.1f}", f"{b.cost.rps:.1f}", ratio(a.cost.rps, b.cost.rps)],
        [
            "requests/s per training",
            f"{per(a.cost.rps, a.trainings):.3f}",
            f"{per(b.cost.rps, b.trainings):.3f}",
            ratio(per(a.cost.rps, a.trainings), per(b.cost.rps, b.trainings)),
        ],
        [
            "CPU-s/min",
            f"{a.cost.cpu_per_minute:.1f}",
            f"{b.cost.cpu_per_minute:.1f}",
            ratio(a.cost.cpu_per_minute, b.cost.cpu_per_minute),
        ],
        [
            "CPU-s/min per training",
            f"{per(a.cost.cpu_per_minute, a.trainings):.3f}",
            f"{per(b.cost.cpu_per_minute, b.trainings):.3f}",
            ratio(per(a.cost.cpu_per_minute, a.trainings), per(b.cost.cpu_per_minute, b.trainings)),
        ],
        [
            "RSS MiB (end of window)",
            f"{a.rss_kib / 1024:.0f}",
            f"{b.rss_kib / 1024:.0f}",
            ratio(a.rss_kib, b.rss_kib),
        ],
        [
            "peak RSS MiB (VmHWM)",
            f"{a.hwm_kib / 1024:.0f}",
            f"{b.hwm_kib / 1024:.0f}",
            ratio(a.hwm_kib, b.hwm_kib),
        ],
        ["load 1/5/15 after the window", a.load, b.load, ""],
    ]
    headers = ["steady state", f"N={a.trainings}", f"N={b.trainings}", "ratio"]
    return markdown(headers, rows)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trainings", type=int, default=200, help="N (default 200)")
    parser.add_argument("--workers", type=int, default=4, help="workers per training (4)")
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--scale-to", type=int, default=0, help="M of item 5; 0 skips it")
    parser.add_argument("--restart-runs", type=int, default=5)
    parser.add_argument("--big-workers", type=int, default=32)
    parser.add_argument("--big-runs", type=int, default=3)
    parser.add_argument(
        "--operator-cmd",
        default=shlex.join([str(REPO / ".venv" / "bin" / "berth-operator")]),
        help="operator command line (shell words); default: the venv's berth-operator",
    )
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra operator argument (repeatable; use --operator-arg=--flag=value)",
    )
    parser.add_argument(
        "--cluster-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "berth-bench-cluster",
        help="hack/cluster.py state dir (BERTH_CLUSTER_DIR)",
    )
    parser.add_argument("--keep-cluster", action="store_true", help="leave it running")
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="bound of every single wait (s)"
    )
    args = parser.parse_args(argv)
    if args.trainings < 1 or args.workers < 2:
        parser.error("--trainings >= 1 and --workers >= 2 (worker 1 exits in item 2)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    cp = ControlPlane(args.cluster_dir.resolve())
    operator: Operator | None = None
    bench = Bench(args, cp, workdir, run)
    log(f"run {run}; work dir {workdir}; load {load()}")
    failed = False
    try:
        cp.up()
        n, m = args.trainings, args.scale_to
        pods_needed = max(n, m) * args.workers + args.big_workers + 64
        setup_cluster(cp, run, pods_needed)
        system_ns, namespace = f"bb-{run}-system", f"bb-{run}"
        create_namespace(cp, system_ns)
        create_namespace(cp, namespace)
        wait_for_garbage_collector(cp, system_ns, args.timeout)
        sa_kubeconfig = workdir / "operator.kubeconfig"
        schema = operator_identity(cp, system_ns, run, sa_kubeconfig)

        baseline = bench.baseline_apply(n)
        log(f"item 4 baseline: {baseline:.2f} s")

        liveness, metrics_port = free_port(), free_port()
        argv = [
            *shlex.split(args.operator_cmd),
            "--namespace",
            namespace,
            "--liveness-port",
            str(liveness),
            "--metrics-port",
            str(metrics_port),
            "--log-level",
            "INFO",
            *args.operator_arg,
        ]
        operator = Operator(argv, sa_kubeconfig, workdir / "operator.log")
        operator.start(liveness)
        bench.operator = operator
        bench.meter = Meter(cp, operator, schema)

        bench.apply_and_run(namespace, n, baseline)
        bench.steady_state(n)
        victims = [f"bt-{i:04d}" for i in range(min(args.restart_runs, n))]
        bench.group_restarts(namespace, victims)
        if args.big_runs > 0:
            bench.big_trainings(namespace)
        bench.delete_all(namespace, n)

        if m > 0:
            # The operator watches one namespace: reuse it, now empty.
            bench.apply_and_run(namespace, m, bench.baseline_apply(m))
            bench.steady_state(m)
            bench.delete_all(namespace, m)
        if not operator.alive():
            log(f"operator died during the run:\n{operator.tail()}")
    except KeyboardInterrupt:
        log("interrupted")
        failed = True
    except (TimeoutError, RuntimeError, ApiException, subprocess.TimeoutExpired) as error:
        log(f"error: {type(error).__name__}: {error}")
        failed = True
        if operator is not None:
            log(f"operator log tail:\n{operator.tail()}")
    finally:
        if operator is not None:
            operator.stop()
        if args.keep_cluster:
            log(f"cluster kept: KUBECONFIG={cp.kubeconfig}")
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                cp.down()
        log(f"operator log: {workdir / 'operator.log'}")

    print(
        f"\nBerth operator scale benchmark: N={args.trainings} trainings x {args.workers} workers"
        f" (--scale-to {args.scale_to}), {os.cpu_count()} CPUs; operator: `{args.operator_cmd}`"
        f" {' '.join(args.operator_arg)}\n"
    )
    print(
        markdown(
            ["#", "figure", "size", "value", "load 1/5/15"],
            [[r.item, r.figure, r.size, r.value, r.load] for r in bench.rows],
        )
    )
    if len(bench.steady) >= 2:
        print("\n" + scale_table(bench.steady[0], bench.steady[-1]))
    return 1 if failed or not bench.rows else 0


if __name__ == "__main__":
    sys.exit(main())
