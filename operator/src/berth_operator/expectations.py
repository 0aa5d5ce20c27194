"""What the operator expects to see in its caches after its own writes (pure).

The controller decides from watch caches, which lag its own writes by a few milliseconds. Acting
on a cache that does not yet show the last pass's writes would repeat them: count a group restart
twice, or restart a group because the pods it just deleted still look alive. So, as the
Kubernetes Job controller does, each pass that wrote something records what it expects to see,
and the next pass of that training waits until the caches show it (each cache event wakes the
training again) or until `deadline`, after which it trusts the API server over the cache.

    >>> seen = {"metadata": {"resourceVersion": "41"}}
    >>> Expectations(resource_version="42").met(seen, [])
    False
    >>> Expectations(resource_version="42").met({"metadata": {"resourceVersion": "43"}}, [])
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


def at_least(seen: str | None, wanted: str) -> bool:
    """Whether resourceVersion `seen` is `wanted` or newer.

    resourceVersions are opaque to clients, but the API server hands out etcd revisions, which
    grow; anything that is not a number only matches itself.
    """
    if seen is None:
        return False
    if seen.isdigit() and wanted.isdigit():
        return int(seen) >= int(wanted)
    return seen == wanted


@dataclasses.dataclass(frozen=True)
class Expectations:
    """The last pass's writes of one training, as the caches must come to show them."""

    #: resourceVersion of the training after our status write.
    resource_version: str | None = None
    #: Names of worker pods we created: they must appear.
    created: frozenset[str] = frozenset()
    #: UIDs of worker pods we deleted: they must be gone or terminating.
    deleted: frozenset[str] = frozenset()
    #: We deleted the training itself (ttlSecondsAfterFinished): it must disappear.
    training_gone: bool = False
    #: We created the training's Kueue Workload: it must appear.
    workload_created: bool = False
    #: resourceVersion of the Workload after our last patch of it.
    workload_version: str | None = None
    #: We created the training's data.prepare Job: it must appear.
    prepare_job_created: bool = False
    #: Loop time after which the next pass runs whether or not the caches caught up.
    deadline: float = 0.0

    def met(
        self,
        training: Mapping[str, Any] | None,
        pods: Sequence[Mapping[str, Any]],
        workload: Mapping[str, Any] | None = None,
        prepare_job: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether `training`, `pods`, its Kueue `workload` and its data.prepare Job (as cached
        now) show every write of the last pass."""
        if self.training_gone:
            return training is None
        if training is None:
            return True  # gone for another reason: nothing left to wait for
        meta = training.get("metadata") or {}
        if self.resource_version and not at_least(
            meta.get("resourceVersion"), self.resource_version
        ):
            return False
        if self.workload_created and workload is None:
            return False
        if self.prepare_job_created and prepare_job is None:
            return False
        if self.workload_version and not at_least(
            (workload or {}).get("metadata", {}).get("resourceVersion"), self.workload_version
        ):
            return False
        names = {p["metadata"]["name"] for p in pods}
        if not self.created <= names:
            return False
        alive = {
            p["metadata"].get("uid") for p in pods if not p["metadata"].get("deletionTimestamp")
        }
        return not (self.deleted & alive)

    @property
    def empty(self) -> bool:
        return not (
            self.resource_version
            or self.created
            or self.deleted
            or self.training_gone
            or self.workload_created
            or self.workload_version
            or self.prepare_job_created
        )
