"""Merge a user's `spec.podTemplate` (a core PodTemplateSpec) into a generated worker pod.

The template is the base; what the operator must control wins over it:

* `hostname`, `subdomain`, `restartPolicy` and Berth's labels are always the operator's;
* the container named `trainer` is merged: the template's fields stay, the operator's image,
  command, ports, env, volumeMounts and resources win, lists merge by `name`;
* `volumes` merge by name; other containers (sidecars) and init containers are kept;
* `securityContext` merges field by field, at the pod and in every container: the template's
  values win per field (an `fsGroup`, a non-zero `runAsUser`), Berth's stay wherever the
  template says nothing. So a template that sets one field never drops `runAsNonRoot` or
  seccomp, and every container — the trainer, sidecars and init containers — gets
  `CONTAINER_SECURITY` (no privilege escalation, every capability dropped) underneath its own.
  Whether what the template asked for may run is `berth_operator.podpolicy`'s call;
* `automountServiceAccountToken` and `enableServiceLinks` are defaults the template may set.

    >>> pod = {"metadata": {"labels": {"a": "1"}}, "spec": {"hostname": "w-0", "containers": []}}
    >>> template = {"spec": {"hostname": "x", "nodeSelector": {"pool": "gpu"}}}
    >>> merge_pod_template(pod, template)["spec"]
    {'hostname': 'w-0', 'nodeSelector': {'pool': 'gpu'}, 'containers': []}
    >>> pod["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 65532}
    >>> template = {"spec": {"securityContext": {"fsGroup": 2000},
    ...                      "initContainers": [{"name": "fetch"}]}}
    >>> spec = merge_pod_template(pod, template)["spec"]
    >>> spec["securityContext"]
    {'runAsNonRoot': True, 'runAsUser': 65532, 'fsGroup': 2000}
    >>> spec["initContainers"][0]["securityContext"]
    {'allowPrivilegeEscalation': False, 'capabilities': {'drop': ['ALL']}}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

#: Pod spec fields whose generated value is only a default the template may override.
DEFAULTED_POD_FIELDS = frozenset({"automountServiceAccountToken", "enableServiceLinks"})
#: Container fields whose generated value is only a default the template may override.
DEFAULTED_CONTAINER_FIELDS = frozenset({"terminationMessagePolicy"})
#: Fields merged field by field (`merge_fields`), at the pod and in containers.
FIELD_MERGED = "securityContext"
#: Every container's securityContext underneath its own (Pod Security `restricted` asks these
#: of each container; the pod-level ones, runAsNonRoot and seccomp, are inherited).
CONTAINER_SECURITY: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
#: Lists merged by `name` (generated entries win on a name clash).
NAMED_LISTS = frozenset({"env", "volumeMounts", "ports", "volumes", "containers"})


def merge_by_name(
    ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Ours first, then theirs whose name is not among ours."""
    names = {item.get("name") for item in ours}
    return [dict(i) for i in ours] + [dict(i) for i in theirs if i.get("name") not in names]


def merge_fields(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """`theirs` over `ours`, field by field: nested objects merge, anything else of theirs wins.

    >>> merge_fields({"capabilities": {"drop": ["ALL"]}, "runAsUser": 1},
    ...              {"capabilities": {"add": ["NET_BIND_SERVICE"]}, "runAsUser": 2})
    {'capabilities': {'drop': ['ALL'], 'add': ['NET_BIND_SERVICE']}, 'runAsUser': 2}
    """
    merged = copy.deepcopy(dict(ours))
    for key, value in theirs.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_fields(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_container(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(theirs))
    for key, value in ours.items():
        if key in DEFAULTED_CONTAINER_FIELDS and key in theirs:
            continue
        if key == FIELD_MERGED:
            merged[key] = merge_fields(value, theirs.get(key) or {})
        elif key in NAMED_LISTS:
            merged[key] = merge_by_name(value, theirs.get(key, []))
        elif key == "resources":
            merged[key] = {
                part: {**theirs.get(key, {}).get(part, {}), **value.get(part, {})}
                for part in ("limits", "requests")
                if theirs.get(key, {}).get(part) or value.get(part)
            }
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_pod_template(
    pod: Mapping[str, Any], template: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A new pod: `template` underneath `pod`, by the rules in the module docstring."""
    merged = copy.deepcopy(dict(pod))
    template = copy.deepcopy(dict(template or {}))
    meta = merged.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        extra = template.get("metadata", {}).get(key) or {}
        if extra:
            meta[key] = {**extra, **meta.get(key, {})}
    theirs: dict[str, Any] = template.get("spec") or {}
    spec: dict[str, Any] = dict(theirs)
    for key, value in pod.get("spec", {}).items():
        if key in DEFAULTED_POD_FIELDS and key in theirs:
            continue
        if key == FIELD_MERGED:
            spec[key] = merge_fields(value, theirs.get(key) or {})
        elif key == "containers":
            by_name = {c.get("name"): c for c in theirs.get("containers", [])}
            ours = [_merge_container(c, by_name.get(c.get("name"), {})) for c in value]
            spec[key] = merge_by_name(ours, theirs.get("containers", []))
        elif key in NAMED_LISTS:
            spec[key] = merge_by_name(value, theirs.get(key, []))
        else:
            spec[key] = value
    for key in ("initContainers", "containers"):
        if key in spec:
            spec[key] = [
                {**c, FIELD_MERGED: merge_fields(CONTAINER_SECURITY, c.get(FIELD_MERGED) or {})}
                for c in spec[key]
            ]
    merged["spec"] = spec
    return merged
