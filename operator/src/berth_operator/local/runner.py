"""Run a BertTraining as N local `berth-trainer` processes, with the operator's own policy.

Each worker process stands in for a worker pod: the runner builds the pods the operator would
create (`builders.build_worker_pods`), starts each one's command as a process with its env
(TF_CONFIG re-pointed at free loopback ports, threads = cores / workers), reports the processes
back as pod-shaped dicts, and lets `policy.reconcile` decide every step — group restarts,
backoffLimit, ExitCode rules, activeDeadlineSeconds — exactly as in the cluster. Progress and
validation metrics come from worker 0's metrics endpoint through the operator's `progress`
module; once it exited 0, its termination log's final figures (read by `policy`, as in the
cluster) complete them.

With `data.prepare`, the policy first asks for the prepare Job: the runner starts
`data.prepare.workers` local `berth-trainer prepare --worker I --workers N` processes instead, all
at once, reports them as the Job's pods and the Job (Complete once every one exited 0, Failed at
the first that did not: no retries locally), and the training starts once they are done
(phase Preparing meanwhile).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from berth_operator import labels, podpolicy, prepare
from berth_operator.api import FINISHED_PHASES
from berth_operator.builders import (
    CONFIG_PATH,
    CONTAINER_NAME,
    build_config_map,
    build_worker_pods,
    parse_spec,
)
from berth_operator.policy import Plan, reconcile
from berth_operator.progress import (
    fetch_metrics,
    metrics_url,
    progress_changed,
    progress_from_metrics,
    validation_changed,
    validation_from_metrics,
)
from berth_operator.workers import format_time

#: The image field is meaningless locally; the trainer runs from this Python environment.
LOCAL_IMAGE = "local"
#: Seconds a worker gets to save a checkpoint after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Workers get SIGKILL if the runner dies, so no orphan keeps training."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclasses.dataclass
class Worker:
    """One worker process and the pod it stands in for."""

    pod: dict[str, Any]
    process: subprocess.Popen[bytes]
    metrics_port: int
    termination_log: Path
    created: datetime

    def as_pod(self) -> dict[str, Any]:
        """The pod as the API server would report it now (what `policy` observes)."""
        pod = {**self.pod, "metadata": {**self.pod["metadata"]}}
        pod["metadata"]["creationTimestamp"] = format_time(self.created)
        code = self.process.poll()
        if code is None:
            pod["status"] = {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": CONTAINER_NAME, "state": {"running": {}}}],
            }
            return pod
        if code < 0:  # killed by a signal: report it as a container runtime would
            code = 128 - code
        message = ""
        with contextlib.suppress(OSError):
            message = self.termination_log.read_text(encoding="utf-8", errors="replace")[-4096:]
        pod["status"] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": CONTAINER_NAME,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            **({"message": message.strip()} if message.strip() else {}),
                        }
                    },
                }
            ],
        }
        return pod


class LocalRun:
    """A BertTraining run as local processes; `step()` is one reconcile pass."""

    def __init__(
        self,
        training: Mapping[str, Any],
        work_dir: Path,
        trainer_command: list[str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.training: dict[str, Any] = {
            **training,
            "metadata": {"namespace": "local", "generation": 1, **training["metadata"]},
            "status": {},
        }
        self.name: str = self.training["metadata"]["name"]
        self.spec = parse_spec(self.training)
        self.work_dir = work_dir
        self.trainer_command = trainer_command or [sys.executable, "-m", "berth_trainer"]
        self.clock = clock
        self.workers: dict[str, Worker] = {}
        #: The data.prepare processes (the prepare Job's pods), by pod name.
        self.preparers: dict[str, Worker] = {}
        self.events: list[str] = []
        self.threads = max(1, (os.cpu_count() or 1) // self.spec.workers)
        (work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / "config.yaml"
        self.config_path.write_text(
            build_config_map(self.training)["data"]["config.yaml"], encoding="utf-8"
        )

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.training["status"])

    @property
    def finished(self) -> bool:
        return self.training["status"].get("phase") in FINISHED_PHASES

    def step(self) -> Plan:
        """Observe the processes, decide with `policy.reconcile`, act, record the status."""
        self._reap()
        # No pod is created here: the workers are processes with the user's own rights, so the
        # pod policy (which guards what the operator's ServiceAccount creates) checks nothing.
        plan = reconcile(
            self.training,
            [w.as_pod() for w in self.workers.values()],
            self.clock(),
            pod_policy=podpolicy.Level.PRIVILEGED,
            preparation=self.preparation(),
        )
        for name in plan.delete:
            self._stop(self.workers.pop(name))
        if plan.delete_prepare_job is not None:
            self._stop_preparing()
        if plan.create_prepare_job:
            self._start_preparing()
        if plan.create:
            self._start(plan.create, plan.restart)
        self.training["status"] = {**self.training["status"], **plan.status}
        for event in plan.events:
            self.events.append(f"{event.type} {event.reason}: {event.message}")
        self._poll_progress()
        self.write_status()
        return plan

    def write_status(self) -> None:
        status = {k: v for k, v in self.training["status"].items() if v is not None}
        (self.work_dir / "status.yaml").write_text(
            yaml.safe_dump({"status": status}, sort_keys=False), encoding="utf-8"
        )

    def stop_all(self) -> None:
        """Stop every worker (SIGTERM: the trainer checkpoints and exits) and every prepare
        process, then forget them."""
        for worker in self.workers.values():
            self._signal(worker, signal.SIGTERM)
        for worker in list(self.workers.values()):
            self._wait(worker)
        self.workers.clear()
        self._stop_preparing()

    def pids(self) -> list[int]:
        return [w.process.pid for w in (*self.workers.values(), *self.preparers.values())]

    # -- data.prepare ----------------------------------------------------------------------

    def preparation(self) -> prepare.Preparation:
        """The prepare processes as the policy sees a prepare Job and its pods: Complete once
        every one exited 0, Failed as soon as one did not (no retries locally)."""
        if not self.preparers:
            return prepare.Preparation()
        pods = [w.as_pod() for w in self.preparers.values()]
        phases = [pod["status"]["phase"] for pod in pods]
        status: dict[str, Any] = {
            "active": phases.count("Running"),
            "succeeded": phases.count("Succeeded"),
            "failed": phases.count("Failed"),
        }
        if status["failed"]:
            status["conditions"] = [
                {"type": "Failed", "status": "True", "reason": "PodFailed", "message": ""}
            ]
        elif status["succeeded"] == len(pods):
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        job = {
            "metadata": {"name": prepare.prepare_job_name(self.name)},
            "spec": {"completions": len(pods)},
            "status": status,
        }
        return prepare.Preparation(job, pods)

    def _start_preparing(self) -> None:
        """Start one `berth-trainer prepare` process per slice, as the Job's pods would run."""
        template = prepare.build_prepare_job(self.training, LOCAL_IMAGE)["spec"]["template"]
        container = next(c for c in template["spec"]["containers"] if c["name"] == CONTAINER_NAME)
        slices = int(self.spec.data.prepare.workers) if self.spec.data.prepare else 1
        threads = max(1, (os.cpu_count() or 1) // slices)
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        for index in range(slices):
            name = f"{prepare.prepare_job_name(self.name)}-{index}"
            termination_log = self.work_dir / "logs" / f"prepare-{index}.termination-log"
            termination_log.unlink(missing_ok=True)
            local = {
                CONFIG_PATH: str(self.config_path),
                f"$({prepare.INDEX_ENV})": str(index),
            }
            args = [local.get(a, a) for a in container["command"]]
            args[args.index("--metrics-port") + 1] = "0"  # no endpoint: nothing scrapes it
            args += ["--workers", str(slices), "--termination-log", str(termination_log)]
            log = open(self.work_dir / "logs" / f"prepare-{index}.log", "ab")  # noqa: SIM115
            process = subprocess.Popen(
                [*self.trainer_command, *args[1:]],
                env={
                    **os.environ,
                    **env,
                    prepare.INDEX_ENV: str(index),
                    "BERTH_TERMINATION_LOG": str(termination_log),
                    "BERTH_NUM_THREADS": str(threads),
                    "PYTHONUNBUFFERED": "1",
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            log.close()
            labels_ = {**template["metadata"]["labels"], labels.JOB_COMPLETION_INDEX: str(index)}
            pod = {"metadata": {"name": name, "labels": labels_}, "spec": template["spec"]}
            self.preparers[name] = Worker(pod, process, 0, termination_log, self.clock())

    def _stop_preparing(self) -> None:
        """Kill the prepare processes still running (a slice redone later starts over; its
        finished shards stay) and forget them all."""
        for worker in self.preparers.values():
            self._stop(worker)
        self.preparers.clear()

    # -- processes -------------------------------------------------------------------------

    def _start(self, indexes: list[int], restart: int) -> None:
        pods = {
            int(p["metadata"]["labels"][labels.INDEX]): p
            for p in build_worker_pods(self.training, LOCAL_IMAGE, restart)
        }
        # Fresh ports for every group: the old group's may linger in TIME_WAIT.
        ports = {i: free_port() for i in pods}
        cluster = [f"127.0.0.1:{ports[i]}" for i in sorted(pods)]
        for index in indexes:
            pod = pods[index]
            container = pod["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            if "TF_CONFIG" in env:
                tf_config = json.loads(env["TF_CONFIG"])
                tf_config["cluster"]["worker"] = cluster
                env["TF_CONFIG"] = json.dumps(tf_config)
            metrics_port = free_port()
            termination_log = self.work_dir / "logs" / f"worker-{index}.termination-log"
            termination_log.unlink(missing_ok=True)
            env.update(
                BERTH_METRICS_PORT=str(metrics_port),  # each local worker needs its own port
                BERTH_TERMINATION_LOG=str(termination_log),
                BERTH_NUM_THREADS=str(self.threads),
                PYTHONUNBUFFERED="1",
            )
            args = [str(self.config_path) if a == CONFIG_PATH else a for a in container["command"]]
            args += ["--metrics-port", str(metrics_port)]
            log = open(self.work_dir / "logs" / f"worker-{index}.log", "ab")  # noqa: SIM115
            process = subprocess.Popen(
                [*self.trainer_command, *args[1:]],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the runner, which stops workers cleanly
                preexec_fn=die_with_parent,
            )
            log.close()
            (self.work_dir / "logs" / f"worker-{index}.pid").write_text(str(process.pid))
            self.workers[pod["metadata"]["name"]] = Worker(
                pod, process, metrics_port, termination_log, self.clock()
            )

    def _signal(self, worker: Worker, sig: signal.Signals) -> None:
        if worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, sig)

    def _wait(self, worker: Worker) -> None:
        try:
            worker.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._signal(worker, signal.SIGKILL)
            worker.process.wait()
        # The process group may hold helpers of the trainer: make sure none is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)

    def _stop(self, worker: Worker) -> None:
        """Delete a pod: a failed group is dead anyway, so kill rather than checkpoint."""
        self._signal(worker, signal.SIGKILL)
        self._wait(worker)

    def _reap(self) -> None:
        for worker in self.workers.values():
            worker.process.poll()

    # -- progress --------------------------------------------------------------------------

    def _poll_progress(self) -> None:
        chief = next(
            (w for w in self.workers.values() if w.pod["metadata"]["name"].endswith("-worker-0")),
            None,
        )
        if chief is None or chief.process.poll() is not None:
            return
        try:
            text = fetch_metrics(metrics_url("127.0.0.1", chief.metrics_port), timeout=0.5)
        except OSError:
            return
        progress = progress_from_metrics(text, self.spec.training.global_batch_size)
        old = self.training["status"].get("progress")
        if progress_changed(old, progress):
            progress["updatedAt"] = format_time(self.clock())
            self.training["status"]["progress"] = progress
        validation = validation_from_metrics(text, str(self.spec.task))
        if validation_changed(self.training["status"].get("validation"), validation):
            self.training["status"]["validation"] = {
                **(validation or {}),
                "updatedAt": format_time(self.clock()),
            }


def run_to_completion(
    run: LocalRun, on_pass: Callable[[LocalRun], None], interval: float = 0.5
) -> str:
    """Reconcile until the training finishes; returns the final phase.

    KeyboardInterrupt stops the workers (they checkpoint on SIGTERM) and re-raises.
    """
    try:
        while True:
            run.step()
            on_pass(run)
            if run.finished:
                run.stop_all()
                return str(run.training["status"]["phase"])
            time.sleep(interval)
    except BaseException:
        run.stop_all()
        raise
