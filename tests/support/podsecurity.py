"""Pod Security `restricted` for the test suite: every namespace a test makes enforces it.

The operator's workers must be creatable in a `restricted` namespace (issue: safe on a shared
cluster), so the suite's namespaces enforce that profile and every pod a test creates itself
carries the settings the profile asks for (`restricted_pod`).

    >>> spec = restricted_pod({"containers": [{"name": "main", "image": "pause"}]})
    >>> spec["securityContext"]["runAsNonRoot"], spec["containers"][0]["securityContext"]
    (True, {'allowPrivilegeEscalation': False, 'capabilities': {'drop': ['ALL']}})
"""

from __future__ import annotations

from typing import Any

#: Labels of every namespace the suite creates.
NAMESPACE_LABELS: dict[str, str] = {
    "berth.dev/test": "true",
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
#: The non-root user of Berth's images (and a numeric user for the pause image).
TEST_UID = 65532


def restricted_pod(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (a PodSpec) with the pod- and container-level settings `restricted` requires."""
    spec["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": TEST_UID,
        "runAsGroup": TEST_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
        **(spec.get("securityContext") or {}),
    }
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            **(container.get("securityContext") or {}),
        }
    return spec
