"""The pod policy: may the operator create this worker pod? Pure.

The operator's ServiceAccount creates the workers, so admission plugins that trust controllers
see the operator, not the tenant who wrote `spec.podTemplate`. Berth therefore judges the
*merged* worker pod itself (what `builders.build_worker_pod` returns) before any pod exists,
at a level the cluster admin picks per namespace (`settings.Settings.pod_policy_for`):

* `restricted` (the default): what Pod Security's `restricted` profile refuses;
* `baseline`: what Pod Security's `baseline` profile refuses;
* `privileged`: nothing is checked ("may create BertTrainings" means "may create such pods").

Both checking levels also refuse what Pod Security does not look at but a tenant must not
choose for a pod the operator creates: `nodeName` (skips the scheduler, its quotas and taints)
and a toleration of every taint (`operator: Exists` without a key).

Each violation names the field as the user wrote it (`spec.podTemplate.spec...`, a list item
by its name), since Berth's own parts of the pod always pass.

    >>> pod = {"spec": {"hostNetwork": True, "containers": [{"name": "sidecar",
    ...        "securityContext": {"privileged": True}}]}}
    >>> for problem in violations(pod, Level.BASELINE):
    ...     print(problem)
    spec.podTemplate.spec.hostNetwork: must not be true (host namespaces)
    spec.podTemplate.spec.containers[name=sidecar].securityContext.privileged: must not be true
    >>> violations(pod, Level.PRIVILEGED)
    []
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

#: Where the user wrote the pod's fields.
TEMPLATE = "spec.podTemplate"


class Level(enum.StrEnum):
    """Pod policy levels, named and ordered as Pod Security's profiles."""

    RESTRICTED = "restricted"
    BASELINE = "baseline"
    PRIVILEGED = "privileged"


#: Capabilities `baseline` lets a container add (Pod Security's list).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: The one capability `restricted` lets a container add.
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Sysctls `baseline` allows (Pod Security's safe set, v1.34).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
#: SELinux types `baseline` allows ("" is unset).
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
#: Volume types `restricted` allows.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: Seccomp and AppArmor profile types every checking level allows.
CONFINED_PROFILES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _item(items: str, item: Mapping[str, Any], index: int) -> str:
    """`containers[name=x]`, or `ports[0]` for an item without a name."""
    name = item.get("name")
    return f"{items}[name={name}]" if name else f"{items}[{index}]"


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path, container) of every init container and container."""
    for key in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(key) or ()):
            yield f"spec.{_item(key, container, i)}", container


def _baseline(pod: Mapping[str, Any]) -> Iterator[str]:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            yield f"spec.{key}: must not be true (host namespaces)"
    if spec.get("nodeName"):
        yield "spec.nodeName: must not be set (pods are placed by the scheduler)"
    for i, toleration in enumerate(spec.get("tolerations") or ()):
        if toleration.get("operator") == "Exists" and not toleration.get("key"):
            yield f"spec.tolerations[{i}]: must name a key (operator Exists without a key "
            "tolerates every taint)"
    for i, volume in enumerate(spec.get("volumes") or ()):
        if "hostPath" in volume:
            yield f"spec.{_item('volumes', volume, i)}.hostPath: hostPath volumes are not allowed"
    pod_context = spec.get("securityContext") or {}
    for i, sysctl in enumerate(pod_context.get("sysctls") or ()):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"spec.securityContext.sysctls[{i}]: {sysctl.get('name')} is not a safe sysctl"
    yield from _context_baseline("spec.securityContext", pod_context)
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            yield f"metadata.annotations[{key}]: must be runtime/default or localhost/*"
    for path, container in _containers(spec):
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            yield f"{path}.securityContext.privileged: must not be true"
        added = set((context.get("capabilities") or {}).get("add") or ()) - BASELINE_CAPABILITIES
        if added:
            yield f"{path}.securityContext.capabilities.add: {', '.join(sorted(added))} not allowed"
        for i, port in enumerate(container.get("ports") or ()):
            if port.get("hostPort"):
                yield f"{path}.{_item('ports', port, i)}.hostPort: must not be set"
        if context.get("procMount") not in (None, "Default"):
            yield f"{path}.securityContext.procMount: must be Default"
        yield from _context_baseline(f"{path}.securityContext", context)


def _context_baseline(path: str, context: Mapping[str, Any]) -> Iterator[str]:
    """What `baseline` refuses in a pod's or a container's securityContext."""
    for profile in ("seccompProfile", "appArmorProfile"):
        if (context.get(profile) or {}).get("type") == "Unconfined":
            yield f"{path}.{profile}.type: must not be Unconfined"
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        yield f"{path}.seLinuxOptions.type: {selinux['type']} is not allowed"
    for key in ("user", "role"):
        if selinux.get(key):
            yield f"{path}.seLinuxOptions.{key}: must not be set"
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield f"{path}.windowsOptions.hostProcess: must not be true"


def _restricted(pod: Mapping[str, Any]) -> Iterator[str]:
    spec = pod.get("spec") or {}
    for i, volume in enumerate(spec.get("volumes") or ()):
        kinds = sorted(set(volume) - {"name"} - RESTRICTED_VOLUMES - {"hostPath"})
        for kind in kinds:  # hostPath: already refused by baseline
            yield f"spec.{_item('volumes', volume, i)}.{kind}: {kind} volumes are not allowed"
    pod_context = spec.get("securityContext") or {}
    if pod_context.get("runAsNonRoot") is False:
        yield "spec.securityContext.runAsNonRoot: must be true"
    if pod_context.get("runAsUser") == 0:
        yield "spec.securityContext.runAsUser: must not be 0 (root)"
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for path, container in _containers(spec):
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"{path}.securityContext.allowPrivilegeEscalation: must be false"
        if context.get("runAsNonRoot") is False:
            yield f"{path}.securityContext.runAsNonRoot: must be true"
        elif "runAsNonRoot" not in context and pod_context.get("runAsNonRoot") is None:
            yield f"{path}.securityContext.runAsNonRoot: must be true (here or for the pod)"
        if context.get("runAsUser") == 0:
            yield f"{path}.securityContext.runAsUser: must not be 0 (root)"
        seccomp = (context.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in CONFINED_PROFILES and seccomp != "Unconfined":  # baseline says that
            yield f"{path}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            yield f"{path}.securityContext.capabilities.drop: must include ALL"
        added = set(capabilities.get("add") or ()) - RESTRICTED_CAPABILITIES
        if added & BASELINE_CAPABILITIES:  # the others: baseline says that
            yield (
                f"{path}.securityContext.capabilities.add: "
                f"{', '.join(sorted(added & BASELINE_CAPABILITIES))} not allowed"
            )


def violations(pod: Mapping[str, Any], level: Level | str) -> list[str]:
    """What `level` refuses in the merged worker `pod`, each as `<field>: <why>`."""
    level = Level(level)
    if level == Level.PRIVILEGED:
        return []
    found = list(_baseline(pod))
    if level == Level.RESTRICTED:
        found += _restricted(pod)
    return [f"{TEMPLATE}.{problem}" for problem in found]
