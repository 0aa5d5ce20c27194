"""The only module that talks to the API server (besides kopf itself).

Objects go in and come out as plain camelCase dicts, like the builders make them. Creating an
object that already exists (409) and deleting one that is gone (404) both count as success, so
a retried or restarted pass never duplicates or fails on its own earlier work; but an existing
object counts as ours only if it carries our ownerReference (the training's UID): anything else
of that name is a name clash the user must resolve, and is never patched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from berth_operator import kueue, labels


def load_config(pool_size: int | None = None) -> None:
    """In-cluster service account if there is one, else the kubeconfig ($KUBECONFIG).

    `pool_size`: HTTP connections kept per API server, sized to the threads that call it, so no
    request waits for, or throws away, a connection.
    """
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    if pool_size:
        configuration = kubernetes.client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = pool_size
        kubernetes.client.Configuration.set_default(configuration)


def namespace_terminating(error: ApiException) -> bool:
    """Whether the API server refused a create because the namespace is being deleted."""
    return error.status == 403 and "NamespaceTerminating" in str(error.body or "")


class NamespaceTerminatingError(Exception):
    """The namespace is being deleted: nothing new can be created in it."""


class KueueMissingError(Exception):
    """--kueue, but the API server has no Kueue Workloads (the message says so)."""


class CreateRefusedError(Exception):
    """The API server refused a child for a reason retrying alone does not fix: a missing
    ServiceAccount, Pod Security admission or a ResourceQuota (403), an invalid object (422), or
    its name is taken by an object the training does not own. The message says which and why
    (the API server's own words where it refused)."""


class LeftoverError(Exception):
    """An object of the child's name still belongs to a deleted training of the same name, or
    is being deleted: the garbage collector removes it; try again later."""


#: Statuses of a refused create that only the user can fix (see CreateRefusedError).
REFUSED = frozenset({400, 403, 422})


def api_message(error: ApiException) -> str:
    """The API server's message in a failed call's Status body (else the HTTP reason)."""
    try:
        message = json.loads(error.body or "")["message"]
    except (TypeError, ValueError, KeyError):
        message = None
    return str(message or error.reason or f"HTTP {error.status}")


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The controller's ownerReference of `obj` (kopf.adopt sets it), or None."""
    refs = obj["metadata"].get("ownerReferences") or ()
    return next((ref for ref in refs if ref.get("controller")), None)


def _json(response: Any) -> Any:
    return json.loads(response.data)


def _drain(response: Any) -> None:
    """Read a raw response so its connection goes back to the pool."""
    response.data  # noqa: B018


def _patched(call: Any, where: tuple[str, ...], patch: Mapping[str, Any]) -> str | None:
    """Run a custom-object merge-patch `call` on `where` (group, version, namespace, plural,
    name); the object's new resourceVersion, or None when it is gone."""
    try:
        result = call(*where, dict(patch), _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return str(_json(result)["metadata"]["resourceVersion"])


class FencedApiClient(kubernetes.client.ApiClient):
    """An ApiClient that calls `fence()` before every request but a read (GET, HEAD,
    OPTIONS): `fence` raises to refuse the write (`berth_operator.leader.Elector.fence`: no
    write after this replica may have lost the Lease). At this one choke point no write method
    of `Cluster`, present or future, can skip it."""

    READS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(
        self,
        fence: Callable[[], None],
        configuration: kubernetes.client.Configuration | None = None,
    ) -> None:
        super().__init__(configuration)
        self.fence = fence

    def call_api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in self.READS:
            self.fence()
        return super().call_api(method, *args, **kwargs)


class Cluster:
    """Typed wrappers over the few API calls the operator makes.

    Responses are never turned into the client's model objects (`_preload_content=False`):
    that costs milliseconds of CPU per call, and the operator reads its objects from watches.
    With a `fence` (leader election), every write first calls it (FencedApiClient).
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        if fence is not None:
            api_client = FencedApiClient(fence, api_client.configuration if api_client else None)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)

    def delete_training(self, namespace: str, name: str) -> None:
        try:
            response = self.custom.delete_namespaced_custom_object(
                labels.GROUP,
                labels.VERSION,
                namespace,
                labels.PLURAL,
                name,
                propagation_policy="Background",
                _preload_content=False,
            )
        except ApiException as error:
            if error.status != 404:
                raise
        else:
            _drain(response)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str | None:
        """Merge-patch the training's status; its new resourceVersion (None: it is gone)."""
        return _patched(
            self.custom.patch_namespaced_custom_object_status,
            (labels.GROUP, labels.VERSION, namespace, labels.PLURAL, name),
            {"status": dict(status)},
        )

    def namespace_terminating(self, namespace: str) -> bool:
        """Whether `namespace` is being deleted: a server-side dry-run create tells, with no
        permission beyond the ConfigMap create the operator has anyway."""
        probe: Any = {"metadata": {"generateName": "berth-probe-", "namespace": namespace}}
        try:
            _drain(
                self.core.create_namespaced_config_map(
                    namespace, probe, dry_run="All", _preload_content=False
                )
            )
        except ApiException as error:
            if namespace_terminating(error):
                return True
            raise
        return False

    def _calls(self, kind: str) -> tuple[Any, Any]:
        """The client's (create, read) calls of a child's kind."""
        calls = {
            "Pod": (self.core.create_namespaced_pod, self.core.read_namespaced_pod),
            "Service": (self.core.create_namespaced_service, self.core.read_namespaced_service),
            "ConfigMap": (
                self.core.create_namespaced_config_map,
                self.core.read_namespaced_config_map,
            ),
            "NetworkPolicy": (
                self.networking.create_namespaced_network_policy,
                self.networking.read_namespaced_network_policy,
            ),
            "Job": (self.batch.create_namespaced_job, self.batch.read_namespaced_job),
            "Deployment": (
                self.apps.create_namespaced_deployment,
                self.apps.read_namespaced_deployment,
            ),
        }
        if kind not in calls:
            raise ValueError(f"cannot create a {kind}")
        return calls[kind]

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create a Pod, Service, ConfigMap, NetworkPolicy, Job or Deployment; False if it
        already existed and is ours (see `_create`)."""
        return self._create(obj) is None

    def _create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj`: None, or the object of its name that already existed, if it carries
        the ownerReference of `obj`'s owner. CreateRefusedError when the API server refused it
        or the name is taken; LeftoverError when a deleted namesake's object is in the way."""
        meta = obj["metadata"]
        namespace, name, kind = meta["namespace"], meta["name"], obj["kind"]
        create, read = self._calls(kind)
        body: Any = dict(obj)  # the client serialises plain dicts as they are
        try:
            _drain(create(namespace, body, _preload_content=False))
        except ApiException as error:
            if namespace_terminating(error):
                raise NamespaceTerminatingError(namespace) from error
            if error.status in REFUSED:
                raise CreateRefusedError(api_message(error)) from error
            if error.status != 409:
                raise
        else:
            return None
        try:
            existing: dict[str, Any] = _json(read(name, namespace, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                raise LeftoverError(f"{kind} {name} was deleted meanwhile") from error
            raise
        owner = controller_ref(obj)
        refs = existing["metadata"].get("ownerReferences") or ()
        if owner is None or any(ref.get("uid") == owner["uid"] for ref in refs):
            return existing
        namesake = any(
            (ref.get("kind"), ref.get("name")) == (owner["kind"], owner["name"]) for ref in refs
        )
        if namesake or existing["metadata"].get("deletionTimestamp"):
            raise LeftoverError(f"{kind} {name} is left from a deleted {owner['kind']}")
        raise CreateRefusedError(
            f"{kind} {name} already exists and is not owned by {owner['kind']} {owner['name']}: "
            "Berth neither uses nor changes it; delete it, or rename the training"
        )

    def sync_config_map(self, obj: Mapping[str, Any]) -> None:
        """Create the ConfigMap, or bring our existing one's data up to date (only if it is
        still the version we read: a conflict is retried)."""
        existing = self._create(obj)
        if existing is not None and existing.get("data") != obj["data"]:
            meta = existing["metadata"]
            _drain(
                self.core.patch_namespaced_config_map(
                    meta["name"],
                    meta["namespace"],
                    {"metadata": {"resourceVersion": meta["resourceVersion"]}, "data": obj["data"]},
                    _preload_content=False,
                )
            )

    def delete_pod(
        self, namespace: str, name: str, uid: str | None = None, grace: int | None = None
    ) -> bool:
        """Delete a pod (only if it still has `uid`, when given); False if it was gone.
        `grace`: seconds instead of its own grace period; 0 for a pod on a dead node."""
        # In the body: the API server ignores the query's gracePeriodSeconds beside a body.
        body: Any = {"preconditions": {"uid": uid}} if uid else {}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            _drain(
                self.core.delete_namespaced_pod(
                    name, namespace, body=body or None, _preload_content=False
                )
            )
        except ApiException as error:
            if error.status == 404 or (uid and error.status == 409):  # gone, or another pod
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete a Job and, in the background, its pods (only if it still has `uid`, when
        given); False if it was gone."""
        body: Any = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            _drain(
                self.batch.delete_namespaced_job(name, namespace, body=body, _preload_content=False)
            )
        except ApiException as error:
            if error.status == 404 or (uid and error.status == 409):
                return False
            raise
        return True

    def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete the Service, NetworkPolicy or Deployment `name` if it carries the
        ownerReference of `owner_uid` (a namesake someone else made is left alone); False if it
        was not there or not ours. A Deployment's pods go with it (background)."""
        _, read = self._calls(kind)
        delete = {
            "Service": self.core.delete_namespaced_service,
            "NetworkPolicy": self.networking.delete_namespaced_network_policy,
            "Deployment": self.apps.delete_namespaced_deployment,
        }[kind]
        try:
            existing = _json(read(name, namespace, _preload_content=False))
            refs = existing["metadata"].get("ownerReferences") or ()
            if not any(ref.get("uid") == owner_uid for ref in refs):
                return False
            body: Any = {
                "preconditions": {"uid": existing["metadata"]["uid"]},
                "propagationPolicy": "Background",
            }
            _drain(delete(name, namespace, body=body, _preload_content=False))
        except ApiException as error:
            if error.status in (404, 409):  # gone, or replaced meanwhile
                return False
            raise
        return True

    def read_node(self, name: str) -> dict[str, Any] | None:
        """The Node `name` (None when it does not exist)."""
        try:
            return dict(_json(self.core.read_node(name, _preload_content=False)))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create_workload(self, obj: Mapping[str, Any]) -> bool:
        """Create a Kueue Workload; False if it already existed. KueueMissingError when the
        API server does not serve Workloads (Kueue is not installed)."""
        try:
            _drain(
                self.custom.create_namespaced_custom_object(
                    kueue.GROUP,
                    kueue.VERSION,
                    obj["metadata"]["namespace"],
                    kueue.WORKLOADS,
                    dict(obj),
                    _preload_content=False,
                )
            )
        except ApiException as error:
            if error.status == 409:
                return False
            if namespace_terminating(error):
                raise NamespaceTerminatingError(obj["metadata"]["namespace"]) from error
            if error.status == 404:  # the namespace exists: its training is in it
                raise KueueMissingError(
                    f"the API server does not serve {kueue.GROUP}/{kueue.VERSION} workloads: "
                    "install Kueue, or run the operator without --kueue"
                ) from error
            raise
        return True

    def patch_workload(
        self, namespace: str, name: str, patch: Mapping[str, Any], status: bool = False
    ) -> str | None:
        """Merge-patch a Workload (its status subresource if `status`); its new
        resourceVersion, or None when it is gone. A patch carrying a stale resourceVersion
        fails with 409, as it should."""
        call = (
            self.custom.patch_namespaced_custom_object_status
            if status
            else self.custom.patch_namespaced_custom_object
        )
        return _patched(call, (kueue.GROUP, kueue.VERSION, namespace, kueue.WORKLOADS, name), patch)

    def delete_workload(self, namespace: str, name: str) -> None:
        """Delete a Workload (gone already counts as done)."""
        try:
            _drain(
                self.custom.delete_namespaced_custom_object(
                    kueue.GROUP,
                    kueue.VERSION,
                    namespace,
                    kueue.WORKLOADS,
                    name,
                    _preload_content=False,
                )
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def get_kueue_object(self, plural: str, name: str) -> dict[str, Any] | None:
        """A cluster-scoped Kueue object (ResourceFlavor, WorkloadPriorityClass), or None."""
        try:
            result = self.custom.get_cluster_custom_object(
                kueue.GROUP, kueue.VERSION, plural, name, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        found: dict[str, Any] = _json(result)
        return found

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded (only for spec.tpu.credentialsSecret; needs secrets get)."""
        try:
            secret = _json(
                self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
