"""Who may use which Cloud TPU, and which node is whose. Pure.

The operator calls the Cloud TPU API with its own identity unless a training names a
`credentialsSecret`, so a free `spec.tpu.project` would let any namespace spend, read and delete
in any project the operator can reach (a confused deputy). Three rules close that:

* a node's id is derived from the training's namespace, name and uid, and the node carries labels
  naming them: two namespaces' `bert` get two nodes, and a node is used or deleted only when its
  `berth-uid` label is this training's uid (`TrainingRef.owns`);
* the admin maps namespaces to the GCP projects they may use (`TpuTenancy.projects`; none
  unless mapped) and may require each namespace's own `credentialsSecret`;
* the admin may pin the TPU VM's service account per namespace (`TpuTenancy.service_accounts`).

    >>> ref = TrainingRef("ml", "bert", "0b6e4c8e-1111-2222-3333-444455556666")
    >>> ref.node_id
    'berth-ad2300caff59dc9e4c532f05'
    >>> tenancy = TpuTenancy(projects={"ml": frozenset({"proj-a"})})
    >>> tenancy.refusal("ml", "proj-a", None, None) is None
    True
    >>> tenancy.refusal("other", "proj-a", None, None).reason
    'TpuProjectNotAllowed'
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from berth_operator.api import GCP_PROJECT_PATTERN, GCP_SERVICE_ACCOUNT_PATTERN

#: `--tpu-project '*=...'` applies to every namespace; a project `*` allows any project.
ANY = "*"
#: GCP labels on every node the operator creates; `berth-uid` is what ownership is judged by.
MANAGED_BY = ("managed-by", "berth-operator")
NAMESPACE_LABEL = "berth-namespace"
TRAINING_LABEL = "berth-training"
UID_LABEL = "berth-uid"
#: Node ids are `berth-` + this many hex digits of a SHA-256: fixed length (30), valid as a
#: Compute Engine resource name (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`), 96 bits against collisions.
ID_HEX_DIGITS = 24
#: GCP label values: lowercase letters, digits, `_` and `-`, at most 63 characters.
LABEL_VALUE_MAX = 63
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9_-]")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PROJECT = re.compile(GCP_PROJECT_PATTERN)
_SERVICE_ACCOUNT = re.compile(GCP_SERVICE_ACCOUNT_PATTERN)


def label_value(text: str) -> str:
    """`text` as a GCP label value (other characters become `_`, cut at 63).

    >>> label_value("bert.v2"), len(label_value("x" * 80))
    ('bert_v2', 63)
    """
    return _NOT_LABEL_CHARS.sub("_", text.lower())[:LABEL_VALUE_MAX]


@dataclasses.dataclass(frozen=True)
class TrainingRef:
    """The training a Cloud TPU node belongs to: its node id and labels derive from this."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, meta: Mapping[str, Any]) -> TrainingRef:
        """The ref of a BertTraining's `metadata`."""
        return cls(str(meta["namespace"]), str(meta["name"]), str(meta["uid"]))

    @property
    def node_id(self) -> str:
        """The node (and queued resource) id: unique per training, whatever its name's length.

        A hash, not the name: names of two namespaces collide, and a recreated training (new
        uid) never meets the node of its predecessor.
        """
        digest = hashlib.sha256(f"{self.namespace}/{self.name}/{self.uid}".encode()).hexdigest()
        return f"berth-{digest[:ID_HEX_DIGITS]}"

    @property
    def labels(self) -> dict[str, str]:
        """GCP labels naming the training on its node."""
        return {
            MANAGED_BY[0]: MANAGED_BY[1],
            NAMESPACE_LABEL: label_value(self.namespace),
            TRAINING_LABEL: label_value(self.name),
            UID_LABEL: label_value(self.uid),
        }

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels is this training's (and so may be used or deleted)."""
        managed = labels.get(MANAGED_BY[0]) == MANAGED_BY[1]
        return managed and labels.get(UID_LABEL) == label_value(self.uid)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a training may not use the Cloud TPU API at all: a condition reason and message."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class TpuTenancy:
    """The admin's Cloud TPU rules (operator flags `--tpu-project`, `--tpu-service-account`,
    `--tpu-require-credentials-secret`; the chart's `tpu` values)."""

    #: Namespace (or `*`) → the GCP projects its trainings may use (`*`: any). Unmapped: none.
    projects: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    #: Namespace (or `*`) → the TPU VM service account its nodes run as.
    service_accounts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Refuse trainings without their own `credentialsSecret` (never the operator's identity).
    require_credentials_secret: bool = False

    def allowed_projects(self, namespace: str) -> frozenset[str]:
        return self.projects.get(namespace, frozenset()) | self.projects.get(ANY, frozenset())

    def pinned_service_account(self, namespace: str) -> str | None:
        return self.service_accounts.get(namespace) or self.service_accounts.get(ANY)

    def refusal(
        self,
        namespace: str,
        project: str | None,
        credentials_secret: str | None,
        service_account: str | None,
    ) -> Refusal | None:
        """Why `namespace` may not run this `spec.tpu` (checked before any Cloud TPU call)."""
        allowed = self.allowed_projects(namespace)
        if ANY not in allowed and project not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            return Refusal(
                "TpuProjectNotAllowed",
                f"spec.tpu.project: {project!r} is not allowed in namespace {namespace} "
                f"(allowed: {listed}); a cluster admin maps namespaces to GCP projects with the "
                f"operator's --tpu-project {namespace}=PROJECT (chart value tpu.namespaces)",
            )
        if self.require_credentials_secret and not credentials_secret:
            return Refusal(
                "TpuCredentialsRequired",
                "spec.tpu.credentialsSecret: required on this cluster (the operator does not "
                "lend its own Cloud TPU credentials); name a Secret in this namespace with a "
                "service account key in key.json",
            )
        pinned = self.pinned_service_account(namespace)
        if pinned and service_account and service_account != pinned:
            return Refusal(
                "TpuServiceAccountNotAllowed",
                f"spec.tpu.serviceAccount: {service_account!r} is not allowed in namespace "
                f"{namespace}: its TPU VMs run as {pinned} (leave the field out)",
            )
        return None

    def service_account(self, namespace: str, requested: str | None) -> str | None:
        """The TPU VM's service account: the admin's pin, else the training's, else None (the
        project's Compute Engine default service account)."""
        return self.pinned_service_account(namespace) or requested


def _assignment(text: str, what: str) -> tuple[str, str]:
    namespace, sep, value = text.partition("=")
    namespace, value = namespace.strip(), value.strip()
    if not sep or not value or not (namespace == ANY or _NAMESPACE.match(namespace)):
        raise ValueError(f"expected NAMESPACE={what} (NAMESPACE may be {ANY}): {text!r}")
    return namespace, value


def parse_projects(assignments: Iterable[str]) -> dict[str, frozenset[str]]:
    """`NS=proj-a,proj-b` assignments (repeatable; the same NS adds up) → TpuTenancy.projects.

    >>> parse_projects(["ml=proj-a,proj-b", "ml=proj-c", "*=shared"])["ml"] == {
    ...     "proj-a", "proj-b", "proj-c"}
    True
    """
    out: dict[str, frozenset[str]] = {}
    for text in assignments:
        namespace, value = _assignment(text, "PROJECT[,PROJECT...]")
        projects = frozenset(p.strip() for p in value.split(",") if p.strip())
        bad = [p for p in projects if p != ANY and not _PROJECT.match(p)]
        if bad:
            raise ValueError(f"not a GCP project id: {', '.join(sorted(bad))} (in {text!r})")
        out[namespace] = out.get(namespace, frozenset()) | projects
    return out


def parse_service_accounts(assignments: Iterable[str]) -> dict[str, str]:
    """`NS=EMAIL` assignments → TpuTenancy.service_accounts (one per namespace)."""
    out: dict[str, str] = {}
    for text in assignments:
        namespace, email = _assignment(text, "EMAIL")
        if not _SERVICE_ACCOUNT.match(email):
            raise ValueError(f"not a service account email: {email!r} (in {text!r})")
        if out.get(namespace, email) != email:
            raise ValueError(f"two service accounts for namespace {namespace}")
        out[namespace] = email
    return out
