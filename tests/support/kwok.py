"""Drive KWOK's fake pods from tests (see hack/kwok/stages/30-pod-exit.yaml)."""

from __future__ import annotations

from kubernetes import client

EXIT_CODE = "kwok.berth.dev/exit-code"
EXIT_REASON = "kwok.berth.dev/exit-reason"
TERMINATION_MESSAGE = "kwok.berth.dev/termination-message"


def terminate_pod(
    core_v1: client.CoreV1Api,
    namespace: str,
    pod_name: str,
    exit_code: int,
    message: str | None = None,
    reason: str | None = None,
) -> None:
    """Make a Running KWOK pod's containers exit with `exit_code` (and reason/message).

    The pod becomes Succeeded for 0 and Failed otherwise, as a real kubelet would report it with
    restartPolicy Never.
    """
    annotations = {EXIT_CODE: str(exit_code)}
    if message is not None:
        annotations[TERMINATION_MESSAGE] = message
    if reason is not None:
        annotations[EXIT_REASON] = reason
    core_v1.patch_namespaced_pod(pod_name, namespace, {"metadata": {"annotations": annotations}})
