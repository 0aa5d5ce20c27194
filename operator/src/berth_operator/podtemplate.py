"""Merge a user's `spec.podTemplate` (a core PodTemplateSpec) into a generated worker pod.

The template is the base; what the operator must control wins over it:

* `hostname`, `subdomain`, `restartPolicy` and Berth's labels are always the operator's;
* the container named `trainer` is merged: the template's fields stay, the operator's image,
  command, ports, env, volumeMounts and resources win, lists merge by `name`;
* `volumes` merge by name; other containers (sidecars) and init containers are kept;
* security defaults (`securityContext`, `automountServiceAccountToken`) yield to the template:
  a template that sets them made a deliberate choice.

    >>> pod = {"metadata": {"labels": {"a": "1"}}, "spec": {"hostname": "w-0", "containers": []}}
    >>> template = {"spec": {"hostname": "x", "nodeSelector": {"pool": "gpu"}}}
    >>> merge_pod_template(pod, template)["spec"]
    {'hostname': 'w-0', 'nodeSelector': {'pool': 'gpu'}, 'containers': []}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

#: Pod spec fields whose generated value is only a default the template may override.
DEFAULTED_POD_FIELDS = frozenset(
    {"securityContext", "automountServiceAccountToken", "enableServiceLinks"}
)
#: Container fields whose generated value is only a default the template may override.
DEFAULTED_CONTAINER_FIELDS = frozenset({"securityContext", "terminationMessagePolicy"})
#: Lists merged by `name` (generated entries win on a name clash).
NAMED_LISTS = frozenset({"env", "volumeMounts", "ports", "volumes", "containers"})


def merge_by_name(
    ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Ours first, then theirs whose name is not among ours."""
    names = {item.get("name") for item in ours}
    return [dict(i) for i in ours] + [dict(i) for i in theirs if i.get("name") not in names]


def _merge_container(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(theirs))
    for key, value in ours.items():
        if key in DEFAULTED_CONTAINER_FIELDS and key in theirs:
            continue
        if key in NAMED_LISTS:
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
    if not template:
        return merged
    template = copy.deepcopy(dict(template))
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
        if key == "containers":
            by_name = {c.get("name"): c for c in theirs.get("containers", [])}
            ours = [_merge_container(c, by_name.get(c.get("name"), {})) for c in value]
            spec[key] = merge_by_name(ours, theirs.get("containers", []))
        elif key in NAMED_LISTS:
            spec[key] = merge_by_name(value, theirs.get(key, []))
        else:
            spec[key] = value
    merged["spec"] = spec
    return merged
