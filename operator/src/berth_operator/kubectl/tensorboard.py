"""`kubectl berth tensorboard NAME`: a local URL of a training's TensorBoard.

A training with `spec.tensorboard.enabled` has a Deployment and Service `<name>-tensorboard`
(`berth_operator.tensorboard`) inside the cluster. `forward` waits until its pod is ready and
runs `kubectl port-forward` to the Service on 127.0.0.1, as a user would by hand; the plugin
prints the URL and keeps the forward until Ctrl-C. Everything goes through `kubectl` (the
plugin's parent), so its kubeconfig, context and credentials plugins apply unchanged.

    >>> listening_port("Forwarding from 127.0.0.1:40123 -> 6006")
    40123
    >>> listening_port("Handling connection for 40123") is None
    True
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from berth_operator import labels
from berth_operator.tensorboard import PORT, tensorboard_name

#: How long `forward` waits for the TensorBoard pod to be ready, and for kubectl to listen.
READY_TIMEOUT = 300.0
LISTEN_TIMEOUT = 30.0
FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> \d+")


class TensorBoardError(Exception):
    """What keeps `forward` from giving a URL: said so that the user knows what to do."""


def listening_port(line: str) -> int | None:
    """The local port of kubectl port-forward's `Forwarding from 127.0.0.1:P -> 6006` line."""
    found = FORWARDING.match(line.strip())
    return int(found.group(1)) if found else None


def _kubectl(kubeconfig: str | None, context: str | None) -> list[str]:
    command = ["kubectl"]
    if kubeconfig:
        command += ["--kubeconfig", kubeconfig]
    if context:
        command += ["--context", context]
    return command


def _get(base: list[str], namespace: str, resource: str, name: str) -> dict[str, Any] | None:
    """`kubectl get RESOURCE NAME -o json`; None if it is not found."""
    result = subprocess.run(
        [*base, "get", "--namespace", namespace, resource, name, "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        found: dict[str, Any] = json.loads(result.stdout)
        return found
    if "NotFound" in result.stderr or "not found" in result.stderr:
        return None
    raise TensorBoardError(result.stderr.strip() or f"kubectl get {resource} {name} failed")


def wait_ready(
    namespace: str,
    name: str,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout: float = READY_TIMEOUT,
) -> None:
    """Return once the training's TensorBoard Deployment has a ready pod; TensorBoardError if
    the training does not exist, has no spec.tensorboard.enabled, or the pod is not ready
    within `timeout` seconds (with what its pods say)."""
    base = _kubectl(kubeconfig, context)
    training = _get(base, namespace, f"{labels.PLURAL}.{labels.GROUP}", name)
    if training is None:
        raise TensorBoardError(f'BertTraining "{name}" not found in namespace "{namespace}"')
    if not ((training.get("spec") or {}).get("tensorboard") or {}).get("enabled"):
        raise TensorBoardError(
            f"BertTraining {name} has no TensorBoard: set spec.tensorboard.enabled: true "
            f"(kubectl patch bt {name} --type merge -p "
            """'{"spec": {"tensorboard": {"enabled": true}}}')"""
        )
    deployment_name = tensorboard_name(name)
    deadline = time.monotonic() + timeout
    while True:
        deployment = _get(base, namespace, "deployments.apps", deployment_name)
        status = (deployment or {}).get("status") or {}
        if int(status.get("readyReplicas") or 0) > 0:
            return
        pods = _pods(base, namespace, name) if deployment is not None else []
        if (problem := stuck(pods)) is not None:
            raise TensorBoardError(f"TensorBoard {deployment_name} cannot start: {problem}")
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    if deployment is None:
        raise TensorBoardError(
            f"Deployment {deployment_name} not found after {timeout:.0f}s: is the Berth "
            f"operator running? (kubectl describe bt {name})"
        )
    states = (
        "; ".join(map(pod_state, pods)) or f"no pod (kubectl describe deploy {deployment_name})"
    )
    raise TensorBoardError(
        f"TensorBoard {deployment_name} not ready after {timeout:.0f}s: {states}"
    )


#: Waiting reasons no amount of waiting cures: the image or the pod's config is wrong.
HOPELESS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
#: A container that crashed this often is not about to be ready.
CRASHES = 2


def pod_state(pod: Mapping[str, Any]) -> str:
    """One line on a TensorBoard pod: its name, why it waits and how it last exited.

    >>> pod_state({"metadata": {"name": "b-tensorboard-x"}, "status": {"phase": "Running",
    ...     "containerStatuses": [{"restartCount": 2, "state": {"waiting": {
    ...         "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {
    ...         "exitCode": 137, "reason": "OOMKilled"}}}]}})
    'pod b-tensorboard-x: CrashLoopBackOff, 2 restarts, last exit 137 (OOMKilled)'
    """
    status = pod.get("status") or {}
    why = []
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason"):
            message = str(waiting.get("message") or "")[:200]
            why.append(f"{waiting['reason']}: {message}" if message else waiting["reason"])
        if container.get("restartCount"):
            why.append(f"{container['restartCount']} restarts")
        if last:
            why.append(f"last exit {last.get('exitCode')} ({last.get('reason')})")
    return f"pod {pod['metadata']['name']}: {', '.join(why) or status.get('phase') or 'Pending'}"


def stuck(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the TensorBoard pods will not become ready by waiting (an image that cannot be
    pulled or run, a container that keeps crashing), else None.

    >>> stuck([{"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {
    ...     "waiting": {"reason": "ContainerCreating"}}}]}}]) is None
    True
    """
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in HOPELESS or int(container.get("restartCount") or 0) >= CRASHES:
                return pod_state(pod)
    return None


def _pods(base: list[str], namespace: str, name: str) -> list[dict[str, Any]]:
    """The training's TensorBoard pods."""
    selector = f"{labels.TRAINING}={name},{labels.ROLE}={labels.ROLE_TENSORBOARD}"
    result = subprocess.run(
        [*base, "get", "pods", "--namespace", namespace, "--selector", selector, "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise TensorBoardError(result.stderr.strip() or "kubectl get pods failed")
    pods: list[dict[str, Any]] = json.loads(result.stdout).get("items") or []
    return pods


def forward(
    namespace: str,
    name: str,
    local_port: int = 0,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Wait for the TensorBoard of training `name` (`wait_ready`), then start `kubectl
    port-forward svc/<name>-tensorboard <local_port>:6006` on 127.0.0.1 (0: a free port) and
    return the running process, once it listens, and the URL `http://127.0.0.1:<port>/`.
    The caller stops the process (terminate) when done."""
    wait_ready(namespace, name, kubeconfig, context)
    process = subprocess.Popen(
        [
            *_kubectl(kubeconfig, context),
            "port-forward",
            "--namespace",
            namespace,
            "--address",
            "127.0.0.1",
            f"service/{tensorboard_name(name)}",
            f"{local_port or ''}:{PORT}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None and stderr is not None
    deadline = time.monotonic() + LISTEN_TIMEOUT
    port = None
    while port is None and (left := deadline - time.monotonic()) > 0:
        if not select.select([stdout], [], [], left)[0]:
            break
        line = stdout.readline()  # kubectl prints it once it listens
        if not line:  # it exited
            break
        port = listening_port(line)
    if port is None:
        process.kill()
        _, errors = process.communicate()
        raise TensorBoardError(
            f"kubectl port-forward failed: {errors.strip() or 'it did not listen'}"
        )
    # kubectl prints a line per connection: read them, or a full pipe would stall it.
    for pipe in (stdout, stderr):
        threading.Thread(target=pipe.read, name="port-forward-output", daemon=True).start()
    return process, f"http://127.0.0.1:{port}/"
