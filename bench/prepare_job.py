"""data.prepare on the test control plane: what the Indexed Job `<name>-prepare` costs around the
preparation itself. Prints markdown tables (figure, values, load).

    .venv/bin/python bench/prepare_job.py                    # both parts, 5 KWOK runs
    .venv/bin/python bench/prepare_job.py --parts kwok --runs 10
    .venv/bin/python bench/prepare_job.py --parts real --steps 20

It runs against the control plane already up (`make cluster-up`; `$KUBECONFIG`, default
`.cluster/kubeconfig`), applies the CRD, and starts its own `berth-operator` (the integration
tests' `Operator`: a local process, `--progress-interval 1`) in a fresh namespace per part
(Pod Security `restricted`, as the tests' namespaces).

- `kwok`: the orchestration, `--runs` fresh 2-worker trainings with `data.prepare.workers: 2`
  whose pods run on the cluster's KWOK nodes (no process runs: tests/integration/
  test_operator_prepare.py). Times from the create call: the Job exists, both prepare pods
  exist, both are Running. Then both are made to exit 0 (tests/support/kwok.py `terminate_pod`:
  an annotation KWOK's stage turns into a Succeeded pod), and times from those two patches: the
  pods Succeeded, the Job `SuccessCriteriaMet` and `Complete` (the real kube-controller-manager's
  Job controller), the training's `Prepared=True`, both worker pods exist, phase `Running`.
- `real`: one tiny training on the real node (`RealNode.tiny_training`, the quickstart corpus on
  a claimed volume, as tests/integration/test_real_node_prepare.py) with `data.prepare.workers:
  2`: the prepare pods run the trainer image for real, then the 2 workers train `--steps` from
  the shards. Times from the create call, as seen: the Job, both prepare pods Running and
  Succeeded, the Job Complete, `Prepared=True`, the workers, each phase. Then the `Prepared`
  condition's lastTransitionTime and each prepare pod's own times (created, started, container
  started and finished: the API's whole seconds, ±0.5 s); the shards and examples from the
  slice markers on the volume; the status.progress values seen while Preparing (and how many
  prepare pods had Succeeded then). The operator gets `--metrics-peer` of the node's bridge
  address, so where the NetworkPolicy is enforced its scrape of the prepare pods is admitted.

State is polled every `--poll` s (0.1: the resolution of the KWOK figures; one read of the
training, the Job and the pods per poll). "load" is os.getloadavg() (1/5/15 min). Operator logs
stay in a temporary directory the bench names on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support and the integration tests' Operator

from tests.conftest import delete_namespace, new_namespace  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    CRD,
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Trainings,
    manifest,
)
from tests.support.kwok import terminate_pod  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

#: data of a 2-slice preparation on KWOK (never read: KWOK runs no process).
KWOK_DATA = {
    "train": "gs://berth-test/train/*.txt",
    "prepare": {"workers": 2, "output": "gs://berth-test/shards"},
}
SLICES = 2
CLAIM = "data"
STARTED = time.monotonic()


def log(message: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - STARTED:7.1f}s] {message}\n")
    sys.stderr.flush()


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def kubectl(*args: str) -> None:
    out = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")


@dataclasses.dataclass
class Snapshot:
    """One poll: the training's status, its prepare Job (None: none yet) and its pods."""

    status: dict[str, Any]
    job: client.V1Job | None
    pods: list[client.V1Pod]

    def role(self, role: str) -> list[client.V1Pod]:
        return [p for p in self.pods if p.metadata.labels.get("berth.dev/role") == role]

    def condition(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions") or [] if c["type"] == kind), None)

    def job_condition(self, kind: str) -> bool:
        found = (self.job.status.conditions or []) if self.job and self.job.status else []
        return any(c.type == kind and c.status == "True" for c in found)


def snapshot(trainings: Trainings, name: str) -> Snapshot:
    batch = client.BatchV1Api(trainings.core.api_client)
    try:
        job = batch.read_namespaced_job(f"{name}-prepare", trainings.namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        job = None
    return Snapshot(trainings.status(name), job, trainings.pods(name))


Check = Callable[[Snapshot], bool]


def first_times(
    trainings: Trainings,
    name: str,
    checks: dict[str, Check],
    start: float,
    poll: float,
    timeout: float,
    seen: Callable[[Snapshot], None] = lambda _: None,
) -> dict[str, float | None]:
    """Seconds from `start` until each check first held (None: not within `timeout`), until the
    last check (the end state) held or the training Failed; `seen` gets every snapshot."""
    found: dict[str, float | None] = dict.fromkeys(checks)
    last = list(checks)[-1]
    while time.monotonic() - start < timeout and found[last] is None:
        with contextlib.suppress(ApiException):
            now = snapshot(trainings, name)
            elapsed = time.monotonic() - start
            seen(now)
            for figure, check in checks.items():
                if found[figure] is None and check(now):
                    found[figure] = elapsed
                    log(f"{name}: {figure} at {elapsed:.2f} s (load {load()})")
            if now.status.get("phase") == "Failed":
                log(f"{name} Failed: {now.status.get('message')}")
                break
        time.sleep(poll)
    return found


def running(pod: client.V1Pod) -> bool:
    return pod.status.phase == "Running" and bool(pod.status.pod_ip)


@contextlib.contextmanager
def watched_namespace(
    api: client.ApiClient, logfile: Path, extra: list[str], node: Any = None
) -> Iterator[tuple[Trainings, Path | None]]:
    """A fresh namespace (with `node`, a RealNode: the quickstart corpus claimed as CLAIM, its
    folder yielded) and a berth-operator watching it, answering /healthz. At exit every training
    is deleted while the operator still runs (its finalizer needs it), then it stops, then the
    volume and the namespace go."""
    namespace = new_namespace(api)
    custom = client.CustomObjectsApi(api)
    try:
        with contextlib.ExitStack() as stack:
            volume = None
            if node is not None:
                volume = stack.enter_context(node.claimed_corpus(api, namespace, CLAIM))
            operator = Operator(namespace, logfile, extra).start()
            stack.callback(operator.stop)
            url = f"http://127.0.0.1:{operator.liveness_port}/healthz"
            wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, what=url)
            try:
                yield Trainings(api, namespace), volume
            finally:
                with contextlib.suppress(ApiException, AssertionError):
                    custom.delete_collection_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL
                    )
                    wait_for(
                        lambda: (
                            not custom.list_namespaced_custom_object(
                                GROUP, VERSION, namespace, PLURAL
                            )["items"]
                        ),
                        timeout=60,
                        what="trainings deleted",
                    )
    finally:
        delete_namespace(api, namespace)


# ---------------------------------------------------------------------------------------------
# KWOK: the orchestration

BEFORE: dict[str, Check] = {
    "create → the Job exists": lambda s: s.job is not None,
    "create → both prepare pods exist": lambda s: len(s.role("prepare")) == SLICES,
    "create → both prepare pods Running": lambda s: (
        len(p := s.role("prepare")) == SLICES and all(map(running, p))
    ),
}
AFTER: dict[str, Check] = {
    "pods exit 0 → both Succeeded (KWOK)": lambda s: (
        len(p := s.role("prepare")) == SLICES and all(x.status.phase == "Succeeded" for x in p)
    ),
    "pods exit 0 → Job SuccessCriteriaMet": lambda s: s.job_condition("SuccessCriteriaMet"),
    "pods exit 0 → Job Complete": lambda s: s.job_condition("Complete"),
    "pods exit 0 → training Prepared=True": lambda s: (
        (s.condition("Prepared") or {}).get("status") == "True"
    ),
    "pods exit 0 → both worker pods exist": lambda s: len(s.role("worker")) == 2,
    "pods exit 0 → phase Running": lambda s: s.status.get("phase") == "Running",
}


def kwok_run(trainings: Trainings, name: str, poll: float) -> dict[str, float | None]:
    start = time.monotonic()
    trainings.create(manifest(name, workers=2, data=KWOK_DATA))
    times = first_times(trainings, name, BEFORE, start, poll, timeout=60)
    pods = snapshot(trainings, name).role("prepare")
    if times["create → both prepare pods Running"] is None:
        return times | dict.fromkeys(AFTER)
    for pod in pods:
        terminate_pod(trainings.core, trainings.namespace, pod.metadata.name, 0)
    return times | first_times(trainings, name, AFTER, time.monotonic(), poll, timeout=60)


def seconds(values: list[float | None]) -> tuple[str, str, str]:
    """(every run, median, max) of the runs that got there; "never" for those that did not."""
    got = [v for v in values if v is not None]
    runs = " / ".join("never" if v is None else f"{v:.2f}" for v in values)
    if not got:
        return runs, "never", "never"
    return runs, f"{statistics.median(got):.2f} s", f"{max(got):.2f} s"


def kwok_part(api: client.ApiClient, workdir: Path, runs: int, poll: float) -> list[str]:
    with watched_namespace(api, workdir / "operator-kwok.log", []) as (trainings, _):
        before = load()
        results = []
        for run in range(runs):
            results.append(kwok_run(trainings, f"prep-{run}", poll))
            # Gone before the next run: its clean-up is not timed with the next one.
            trainings.custom.delete_namespaced_custom_object(
                GROUP, VERSION, trainings.namespace, PLURAL, f"prep-{run}"
            )
            wait_for(lambda r=run: not trainings.pods(f"prep-{r}"), 60, what="pods gone")
        after = load()
    lines = [
        f"| figure ({runs} runs) | runs (s) | median | max |",
        "|---|---|---|---|",
    ]
    for figure in [*BEFORE, *AFTER]:
        lines.append("| {} | {} | {} | {} |".format(figure, *seconds([r[figure] for r in results])))
    lines.append(f"\nload (1/5/15 min) before → after: {before} → {after}")
    return lines


# ---------------------------------------------------------------------------------------------
# The real node: one real preparation and the training that reads it


def at(stamp: datetime | str | None, t0: float) -> str:
    """An API timestamp as seconds after the wall-clock time `t0`. The API's are whole seconds,
    cut off: the middle of that second is shown (±0.5 s)."""
    if stamp is None:
        return "-"
    when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
    return f"{when.timestamp() + 0.5 - t0:+.1f} s"


def finished(pod: client.V1Pod) -> client.V1ContainerStateTerminated | None:
    """The trainer container's terminated state, None while it has not ended."""
    for status in pod.status.container_statuses or []:
        if status.name == "trainer" and status.state and status.state.terminated:
            return status.state.terminated
    return None


def prepare_pod_rows(pods: list[client.V1Pod], t0: float) -> list[tuple[str, str]]:
    """Per prepare pod (a retried slice has several): its times from the create call and its
    own durations, from the API's timestamps."""
    rows = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        index = pod.metadata.labels.get("batch.kubernetes.io/job-completion-index")
        done, start = finished(pod), pod.status.start_time
        took = "-"
        if done and done.started_at and done.finished_at and start:
            took = (
                f"{(done.finished_at - done.started_at).total_seconds():.0f} s "
                f"(startTime → finished {(done.finished_at - start).total_seconds():.0f} s)"
            )
        rows.append(
            (
                f"prepare pod of slice {index}: created / startTime / container started / "
                "finished (from create); its container ran",
                f"{at(pod.metadata.creation_timestamp, t0)} / {at(start, t0)} / "
                f"{at(done.started_at if done else None, t0)} / "
                f"{at(done.finished_at if done else None, t0)}; {took}; "
                f"exit {done.exit_code if done else '-'}",
            )
        )
    return rows


def marker_rows(shards: Path) -> list[tuple[str, str]]:
    markers = sorted(shards.glob("slice-*.json")) if shards.is_dir() else []
    if not markers:
        return [("slice markers", f"none in data.prepare.output ({shards.name})")]
    rows = []
    for path in markers:
        m = json.loads(path.read_text())
        files = [Path(n).name for names in (m.get("shards") or {}).values() for n in names]
        rows.append(
            (
                f"marker {path.name}",
                f"{len(files)} shard(s) {files}, {m.get('examples')} examples, "
                f"{m.get('tokens')} tokens, input_bytes {m.get('input_bytes')}",
            )
        )
    tfrecords = [p for p in shards.iterdir() if p.suffix == ".tfrecord"]
    size = sum(p.stat().st_size for p in tfrecords)
    rows.append(("shards on the volume", f"{len(tfrecords)} files, {size / 1e6:.2f} MB"))
    return rows


def real_run(
    trainings: Trainings, volume: Path, body: dict[str, Any], poll: float, timeout: float
) -> list[tuple[str, str]]:
    """Create `body` (training "prep"), follow it until Succeeded, then read what it left."""
    phases: dict[str, float] = {}
    progress: list[str] = []

    def seen(s: Snapshot) -> None:
        phase = s.status.get("phase")
        if phase and phase not in phases:
            phases[phase] = time.monotonic() - start
        p = s.status.get("progress") or {}
        done = sum(x.status.phase == "Succeeded" for x in s.role("prepare"))
        said = (
            f"{p.get('preparedBytes')}/{p.get('inputBytes')} B ({p.get('summary')}; "
            f"{done} of the prepare pods Succeeded then)"
        )
        if phase == "Preparing" and "preparedBytes" in p and progress[-1:] != [said]:
            progress.append(said)

    checks: dict[str, Check] = {
        "create → the Job exists": lambda s: s.job is not None,
        "create → both prepare pods Running (seen)": BEFORE["create → both prepare pods Running"],
        "create → both prepare pods Succeeded (seen)": AFTER["pods exit 0 → both Succeeded (KWOK)"],
        "create → the Job Complete": lambda s: s.job_condition("Complete"),
        "create → Prepared=True (seen)": lambda s: (
            (s.condition("Prepared") or {}).get("status") == "True"
        ),
        "create → both worker pods exist": lambda s: len(s.role("worker")) == 2,
        "create → Succeeded": lambda s: s.status.get("phase") == "Succeeded",
    }
    t0, start = time.time(), time.monotonic()
    trainings.create(body)
    times = first_times(trainings, "prep", checks, start, poll, timeout, seen)
    final = snapshot(trainings, "prep")
    rows = [(f, "never" if v is None else f"{v:.1f} s") for f, v in times.items()]
    rows += [(f"phase {p} first seen", f"{v:.1f} s") for p, v in phases.items()]
    prepared = final.condition("Prepared") or {}
    created = trainings.get("prep")["metadata"]["creationTimestamp"]
    rows.append(
        (
            "time in Preparing: the Prepared condition's lastTransitionTime",
            f"{at(prepared.get('lastTransitionTime'), t0)} from the create call, "
            f"{_span(created, prepared)} from the training's creationTimestamp",
        )
    )
    rows += prepare_pod_rows(final.role("prepare"), t0)
    rows += marker_rows(volume / "prep" / "shards")
    rows.append(("status.progress seen while Preparing", " → ".join(progress) or "none landed"))
    ended = f"{final.status.get('phase')}; {final.status.get('prepare')}"
    if said := final.status.get("message"):
        ended += f"; {said}"
    rows.append(("final phase; status.prepare", ended))
    return rows


def real_part(
    api: client.ApiClient, workdir: Path, steps: int, poll: float, timeout: float
) -> list[str]:
    from tests.support.realnode import RealNode  # imports the trainer (TensorFlow): only here

    node = RealNode.from_cluster()
    # The operator runs on the host: its scrapes come from the node's bridge address.
    peer = ["--metrics-peer", json.dumps({"ipBlock": {"cidr": f"{node.bridge_ip}/32"}})]
    body = node.tiny_training("prep", steps, CLAIM, image=node.image("trainer"))
    body["spec"]["data"]["prepare"] = {"workers": SLICES, "output": "/data/prep/shards"}
    with watched_namespace(api, workdir / "operator-real.log", peer, node) as (trainings, volume):
        assert volume is not None
        rows = real_run(trainings, volume, body, poll, timeout)
        then = load()
    lines = [f"| figure (one run, {steps} steps; load at the end {then}) | value |", "|---|---|"]
    return lines + [f"| {figure} | {value} |" for figure, value in rows]


def _span(created: str, condition: dict[str, Any]) -> str:
    stamp = condition.get("lastTransitionTime")
    if not stamp:
        return "-"
    delta = datetime.fromisoformat(stamp) - datetime.fromisoformat(created)
    return f"{delta.total_seconds():.0f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="kwok,real")
    p.add_argument("--runs", type=int, default=5, help="kwok: trainings, one after the other")
    p.add_argument("--steps", type=int, default=20, help="real: training steps after the prepare")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=600, help="real: seconds until 'never'")
    args = p.parse_args()
    parts = args.parts.split(",")
    kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".cluster" / "kubeconfig")
    os.environ["KUBECONFIG"] = kubeconfig
    os.environ["PATH"] = f"{REPO / '.cluster' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    api = config.new_client_from_config(config_file=kubeconfig)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    workdir = Path(tempfile.mkdtemp(prefix="berth-prepare-job-"))
    log(f"operator logs in {workdir}")
    out: list[str] = []
    if "kwok" in parts:
        kwok = kwok_part(api, workdir, args.runs, args.poll)
        out += ["### KWOK: the orchestration of 2 prepare pods", "", *kwok, ""]
    if "real" in parts:
        real = real_part(api, workdir, args.steps, max(args.poll, 0.25), args.timeout)
        out += ["### The real node: one preparation, then the training", "", *real, ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
