"""Faults: how long a training is down when a node dies or is drained — Berth against Kubeflow's
TFJob — plus two figures other scripts measure. Prints one markdown table (figure, value, load).

    .venv/bin/python bench/faults.py                                  # every figure
    .venv/bin/python bench/faults.py --figures node-death,drain --systems berth
    .venv/bin/python bench/faults.py --figures node-death --systems tfjob --tfjob-timeout 600

It runs against the control plane already up (`make cluster-up`; `$KUBECONFIG`, default
`.cluster/kubeconfig`), on KWOK nodes of its own (labelled and tainted `berth.dev/bench-faults=
<namespace>`, 8 `nvidia.com/gpu` each), and starts its own `berth-operator` (the integration
tests' `Operator`) and, for `--systems tfjob`, Kubeflow's training-operator (built by
hack/build-tfjob-reference.sh; `--enable-scheme=tfjob`, its CRDs from the module). Each system
runs 4 workers of 1 GPU spread 2 and 2 over two nodes (topology spread, maxSkew 1 over
`kubernetes.io/hostname`, tainted nodes not counted); both systems share one kill and one drain.

- `node-death`: one node's KWOK process is SIGKILLed (tests/support/kwok.py: `KwokProcess`),
  as a machine losing power. Times from the kill: the Node `Ready=Unknown` (the controller
  manager's node-monitor grace period) and, per system, all 4 workers Running and Ready on the
  surviving node (pods being deleted do not count). Berth's training has `backoffLimit: 0`.
- `drain`: `kubectl drain --ignore-daemonsets --delete-emptydir-data` of one node (cordon, then
  the Eviction API). Times from the drain's start: kubectl returning, and per system all 4
  workers Running and Ready on the other node.
- `sigterm`: bench/sigterm_checkpoint.py's `measure(model)` for tiny, base and large.
- `failover`: the operator's leader failover (see LEADER_FAILOVER).

Conditions are polled every 0.25 s (the resolution of these figures). A system that fails
(Berth: phase Failed; TFJob: condition Failed) is reported as "never: Failed after N s", one
that does not get there within `--timeout` (Berth) or `--tfjob-timeout` (TFJob) as "never
within N s", with where its pods are. The TFJob is `restartPolicy: OnFailure` with the default
`runPolicy`; its validating webhook is registered (its certificate rotator waits until it
injected a CA into it) but matches no object (tests/support/trainingoperator.py). "load" is
os.getloadavg() (1/5/15 min) when the figure's condition was first seen (for "never": at the
end). Operator and KWOK logs stay in a temporary directory the bench names on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support and the integration tests' Operator

from tests.integration.conftest import CRD, GROUP, PLURAL, VERSION, Operator, manifest  # noqa: E402
from tests.support.kwok import (  # noqa: E402
    CLUSTER_KWOK,
    fake_node,
    fake_nodes,
    kwok_process,
    node_ready,
    spread_over_nodes,
)
from tests.support.trainingoperator import (  # noqa: E402
    TRAINING_OPERATOR_VERSION,
    build_training_operator,
    training_operator,
)

BENCH = "berth.dev/bench-faults"
DRAIN = ["kubectl", "drain", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s"]
WORKERS = 4
POLL = 0.25
#: The leader-failover figure: module under bench/ and its function returning {figure: value}.
#: Another change adds it; until then the table says "not available".
LEADER_FAILOVER = ("leader_failover", "measure")
STARTED = time.monotonic()


def log(message: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - STARTED:7.1f}s] {message}\n")
    sys.stderr.flush()


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@dataclasses.dataclass
class Row:
    figure: str
    value: str
    load: str = dataclasses.field(default_factory=load)


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    out = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def bench_module(name: str) -> ModuleType | None:
    """bench/<name>.py, imported by path (bench/ is no package), or None when absent."""
    path = REPO / "bench" / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"berth_bench_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# the two systems' jobs


@dataclasses.dataclass
class System:
    """One job of one system: how to create it and how to find its worker pods."""

    label: str
    selector: dict[str, str]
    create: Callable[[], None]
    #: Its state in a few words, from its status; given the fault's wall-clock time.
    describe: Callable[[float], str]
    #: Whether it gave up (Failed): waiting longer for its workers is pointless.
    failed: Callable[[], bool]

    def pods(self, core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
        selector = ",".join(f"{k}={v}" for k, v in self.selector.items())
        return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def berth(api: client.ApiClient, namespace: str, name: str) -> System:
    selector = {"berth.dev/training": name}
    body = manifest(
        name,
        workers=WORKERS,
        runPolicy={"backoffLimit": 0},
        podTemplate={"spec": spread_over_nodes(BENCH, namespace, selector)},
    )
    custom = client.CustomObjectsApi(api)

    def read_status() -> dict[str, Any]:
        training = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return dict(training.get("status") or {})

    def describe(_: float) -> str:
        status = read_status()
        return (
            f"phase {status.get('phase')}, restarts {status.get('restarts', 0)}, "
            f"disruptions {status.get('disruptions', 0)}, backoffLimit 0"
        )

    return System(
        "Berth",
        selector,
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body),
        describe,
        lambda: read_status().get("phase") == "Failed",
    )


def tfjob(api: client.ApiClient, namespace: str, name: str) -> System:
    selector = {"training.kubeflow.org/job-name": name}
    container = {
        "name": "tensorflow",
        "image": "berth-trainer:test",
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": name},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": WORKERS,
                    "restartPolicy": "OnFailure",
                    "template": {
                        "spec": {
                            **spread_over_nodes(BENCH, namespace, selector),
                            "containers": [container],
                        }
                    },
                }
            }
        },
    }
    custom = client.CustomObjectsApi(api)

    def read_status() -> dict[str, Any]:
        job = custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "tfjobs", name)
        return dict(job.get("status") or {})

    def conditions(status: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for c in status.get("conditions") or [] if c["status"] == "True"]

    def describe(fault: float) -> str:
        status = read_status()
        worker = (status.get("replicaStatuses") or {}).get("Worker") or {}
        said = ""
        if true := conditions(status):
            last = true[-1]
            since = datetime.fromisoformat(last["lastTransitionTime"]).timestamp() - fault
            said = f" ({last['type']} at +{max(since, 0):.0f} s: {last.get('message')})"
        types = "/".join(c["type"] for c in true) or "none"
        return f"conditions {types}{said}, replicaStatuses.Worker {worker}"

    return System(
        "TFJob",
        selector,
        lambda: custom.create_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "tfjobs", body
        ),
        describe,
        lambda: any(c["type"] == "Failed" for c in conditions(read_status())),
    )


def ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def all_on(pods: list[client.V1Pod], node: str) -> bool:
    """WORKERS live pods, all Ready on `node` (pods being deleted do not count)."""
    live = [p for p in pods if not p.metadata.deletion_timestamp]
    return len(live) == WORKERS and all(p.spec.node_name == node and ready(p) for p in live)


def where(pods: list[client.V1Pod], roles: dict[str, str]) -> str:
    """'2 Ready on the surviving node, 2 Running (not Ready) on the dead node' — where a
    system's pods are; `roles` names the nodes."""
    counts: dict[str, int] = {}
    for pod in pods:
        state = "Ready" if ready(pod) else pod.status.phase
        if pod.status.phase == "Running" and not ready(pod):
            state = "Running (not Ready)"
        if pod.metadata.deletion_timestamp:
            state = f"Terminating ({state})"
        node = pod.spec.node_name
        key = f"{state} on {roles.get(node, node) if node else 'no node'}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no pod"


def first_times(
    checks: dict[str, tuple[Callable[[], bool], float]], start: float
) -> dict[str, tuple[float, str] | None]:
    """Seconds from `start` until each (check, timeout) first held (polled every POLL s) and the
    load then; None if not within its timeout."""
    found: dict[str, tuple[float, str] | None] = dict.fromkeys(checks)
    while True:
        elapsed = time.monotonic() - start
        pending = [n for n, (_, limit) in checks.items() if found[n] is None and elapsed < limit]
        if not pending:
            return found
        for name in pending:
            with contextlib.suppress(ApiException):
                if checks[name][0]():
                    seconds, now = time.monotonic() - start, load()
                    found[name] = (seconds, now)
                    log(f"{name}: {seconds:.1f} s (load {now})")
        time.sleep(POLL)


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclasses.dataclass
class Scenario:
    api: client.ApiClient
    namespace: str
    systems: list[System]
    workdir: Path
    kubeconfig: str
    #: Node name → its role in the table ("the dead node").
    roles: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def node(self, short: str, manager: str) -> dict[str, Any]:
        """A bench node of KWOK process `manager`, called "the <short> node" in the table."""
        name = f"{self.namespace}-{short}"
        self.roles[name] = f"the {short} node"
        taints = [{"key": BENCH, "value": self.namespace, "effect": "NoSchedule"}]
        return fake_node(name, {BENCH: self.namespace}, taints, manager=manager, gpus=8)

    def start_spread(self, nodes: list[str]) -> None:
        """Create every system's job; wait until its workers are Ready, 2 on each node."""
        for system in self.systems:
            system.create()
        deadline = time.monotonic() + 90
        for system in self.systems:
            while True:
                pods = system.pods(self.core, self.namespace)
                spread = sorted({p.spec.node_name or "" for p in pods})
                if len(pods) == WORKERS and all(map(ready, pods)) and spread == sorted(nodes):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system.label} not Running: {where(pods, self.roles)}")
                time.sleep(POLL)
        log(f"running 2 + 2 on {nodes}: {', '.join(s.label for s in self.systems)}")

    def recovered(
        self,
        fault: str,
        start: float,
        node: str,
        timeouts: dict[str, float],
        first: tuple[str, Callable[[], bool]],
    ) -> list[Row]:
        """Rows: `fault` → `first` holds, and → each system's workers all Ready on `node`."""
        checks: dict[str, tuple[Callable[[], bool], float]] = {
            first[0]: (first[1], 120),
            **{
                x.label: (
                    lambda x=x: all_on(x.pods(self.core, self.namespace), node) or x.failed(),
                    timeouts[x.label],
                )
                for x in self.systems
            },
        }
        times = first_times(checks, start)
        wall = time.time() - (time.monotonic() - start)
        seconds, then = times[first[0]] or (None, load())
        value = "never" if seconds is None else f"{seconds:.1f} s"
        rows = [Row(f"{fault} → {first[0]}", value, then)]
        for x in self.systems:
            seconds, then = times[x.label] or (None, load())
            pods = x.pods(self.core, self.namespace)
            if seconds is None:
                value = f"never within {timeouts[x.label]:.0f} s: {where(pods, self.roles)}"
            elif x.failed():
                value = f"never: Failed after {seconds:.1f} s, {where(pods, self.roles)}"
            else:
                value = f"{seconds:.1f} s"
            figure = f"{fault} → {x.label}: all {WORKERS} workers Running on {self.roles[node]}"
            rows.append(Row(figure, f"{value}; {x.describe(wall)}", then))
        return rows

    def clean(self) -> None:
        """Delete the jobs and, with grace 0, every pod left (some are on a dead node)."""
        custom = client.CustomObjectsApi(self.api)
        for group, version, plural in ((GROUP, VERSION, PLURAL), ("kubeflow.org", "v1", "tfjobs")):
            with contextlib.suppress(ApiException):
                custom.delete_collection_namespaced_custom_object(
                    group, version, self.namespace, plural
                )
        with contextlib.suppress(ApiException):
            self.core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)


def node_death(s: Scenario, timeouts: dict[str, float]) -> list[Row]:
    """Kill the KWOK process of one of the two nodes."""
    with kwok_process(f"{s.namespace}-doomed", s.kubeconfig, s.workdir) as kwok:
        nodes = [s.node("dead", kwok.manager), s.node("surviving", CLUSTER_KWOK)]
        with fake_nodes(s.core, nodes) as (doomed, survivor):
            try:
                s.start_spread([doomed, survivor])
                kwok.kill()
                start = time.monotonic()
                log(f"killed the KWOK process of {doomed}")
                unknown = (
                    "its Node Ready=Unknown",
                    lambda: node_ready(s.core.read_node(doomed)) == "Unknown",
                )
                return s.recovered("node death", start, survivor, timeouts, unknown)
            finally:
                s.clean()


def drain(s: Scenario, timeouts: dict[str, float]) -> list[Row]:
    """`kubectl drain` one of the two nodes."""
    nodes = [s.node("drained", CLUSTER_KWOK), s.node("other", CLUSTER_KWOK)]
    with fake_nodes(s.core, nodes) as (drained, other):
        try:
            s.start_spread([drained, other])
            start = time.monotonic()
            proc = subprocess.Popen(
                [*DRAIN, drained], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            log(f"kubectl drain {drained}")
            rows = s.recovered(
                "`kubectl drain`",
                start,
                other,
                timeouts,
                ("it returned", lambda: proc.poll() is not None),
            )
            _, stderr = proc.communicate(timeout=60)
            if proc.returncode:
                rows[0].value += f" (exit {proc.returncode}: {' '.join(stderr.split())[-200:]})"
            return rows
        finally:
            s.clean()


def sigterm_rows(models: list[str]) -> list[Row]:
    module = bench_module("sigterm_checkpoint")
    if module is None or not hasattr(module, "measure"):
        return [Row("SIGTERM → checkpoint saved", "not available: bench/sigterm_checkpoint.py")]
    rows = []
    for model in models:
        log(f"sigterm_checkpoint.measure({model!r})")
        r = module.measure(model)
        rows.append(
            Row(
                f"SIGTERM → checkpoint saved, worker gone: BERT-{model}",
                f"{r['total_s']} s (save {r['save_s']} s, {r['ckpt_mb']} MB, to the step "
                f"boundary {r['to_boundary_s']} s; exit codes {r['exit_codes']})",
            )
        )
    return rows


def failover_rows() -> list[Row]:
    # --- LEADER FAILOVER: call site for bench/<LEADER_FAILOVER[0]>.py's
    # <LEADER_FAILOVER[1]>() -> {figure: value}; "not available" until it exists.
    module_name, function = LEADER_FAILOVER
    module = bench_module(module_name)
    measure = getattr(module, function, None) if module else None
    if measure is None:
        return [Row("leader failover", f"not available: bench/{module_name}.py {function}()")]
    return [Row(str(figure), str(value)) for figure, value in measure().items()]


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scenario(
    api: client.ApiClient, systems: list[str], workdir: Path, kubeconfig: str, name: str
) -> Iterator[Scenario]:
    """A fresh namespace with the wanted systems' operators watching it."""
    namespace = f"bench-faults-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(namespace).items:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no default ServiceAccount in {namespace}")
        time.sleep(POLL)
    jobs = []
    try:
        with contextlib.ExitStack() as stack:
            if "berth" in systems:
                operator = Operator(namespace, workdir / f"berth-operator-{name}.log", [])
                stack.callback(operator.stop)
                operator.start()
                jobs.append(berth(api, namespace, name))
            if "tfjob" in systems:
                stack.enter_context(
                    training_operator(api, namespace, workdir / "training-operator.log", BENCH)
                )
                jobs.append(tfjob(api, namespace, f"tf-{name}"))
            yield Scenario(api, namespace, jobs, workdir, kubeconfig)
    finally:
        core.delete_namespace(namespace)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--figures", default="node-death,drain,sigterm,failover")
    p.add_argument("--systems", default="berth,tfjob")
    p.add_argument("--timeout", type=float, default=180, help="Berth: seconds until 'never'")
    p.add_argument("--tfjob-timeout", type=float, default=420, help="TFJob: the same")
    p.add_argument("--models", default="tiny,base,large", help="sigterm: BERT sizes")
    args = p.parse_args()
    figures, systems = args.figures.split(","), args.systems.split(",")
    kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".cluster" / "kubeconfig")
    os.environ["KUBECONFIG"] = kubeconfig
    os.environ["PATH"] = f"{REPO / '.cluster' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    rows: list[Row] = []
    if "tfjob" in systems and (why := build_training_operator()):
        rows.append(
            Row(f"TFJob (training-operator {TRAINING_OPERATOR_VERSION})", f"not built: {why}")
        )
        systems.remove("tfjob")
    timeouts = {"Berth": args.timeout, "TFJob": args.tfjob_timeout}
    api = config.new_client_from_config(config_file=kubeconfig)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    workdir = Path(tempfile.mkdtemp(prefix="berth-faults-"))
    log(f"logs (operators, KWOK) in {workdir}")
    for figure, run in (("node-death", node_death), ("drain", drain)):
        if figure in figures and systems:
            with scenario(api, systems, workdir, kubeconfig, figure.split("-")[0]) as s:
                new = run(s, timeouts)
            for row in new:
                log(f"RESULT {row.figure}: {row.value} (load {row.load})")
            rows += new
    if "sigterm" in figures:
        rows += sigterm_rows(args.models.split(","))
    if "failover" in figures:
        rows += failover_rows()
    print("| figure | value | load (1/5/15 min) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row.figure} | {row.value} | {row.load} |")


if __name__ == "__main__":
    main()
