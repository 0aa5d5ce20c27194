"""The only module that talks to the Cloud TPU API (google-cloud-tpu's `tpu_v2.TpuAsyncClient`).

Calls are made without the library's own retries and with a short timeout, so a pass never
blocks for long: transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) surface as
`TransientTpuError`, which the kopf timer turns into a retry with backoff. Rejections that no
retry fixes (quota, an invalid accelerator, permissions) surface as `TpuRejected` with the API's
message. "Not found" on get/delete and "already exists" on create count as answers, not errors,
so a retried pass never duplicates a TPU.

Only a node whose labels name the training (`TrainingRef.owns`) is read or deleted: a node of
the same id without them is reported as `TpuObservation.foreign` and left alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import tpu_v2
from google.cloud.tpu_v2.services.tpu.transports import TpuGrpcAsyncIOTransport
from google.longrunning import operations_pb2
from google.oauth2 import service_account

from berth_operator.api import TpuSpec
from berth_operator.tpu.node import (
    CLOUD_PLATFORM_SCOPE,
    GUEST_NAMESPACE,
    node_name,
    parent,
    queued_resource_name,
)
from berth_operator.tpu.policy import TpuObservation
from berth_operator.tpu.tenancy import TrainingRef

#: Seconds one API call may take before the pass gives up (and retries later).
CALL_TIMEOUT = 10.0
SCOPES = (CLOUD_PLATFORM_SCOPE,)
TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.Aborted,
    gexc.Unknown,
    gexc.RetryError,
)


class TransientTpuError(Exception):
    """The Cloud TPU API could not answer now; try again later."""


class TpuRejected(Exception):
    """The Cloud TPU API refused the request for good (its message is the exception's)."""


def _transient(error: Exception) -> TransientTpuError:
    return TransientTpuError(f"Cloud TPU API unavailable: {error}")


def make_client(
    endpoint: str, insecure: bool = False, key: Mapping[str, Any] | None = None
) -> tpu_v2.TpuAsyncClient:
    """A TpuAsyncClient for `endpoint`: ADC, a service account `key`, or (tests) plaintext."""
    if insecure:
        transport = TpuGrpcAsyncIOTransport(
            host=endpoint, channel=grpc.aio.insecure_channel(endpoint)
        )
        return tpu_v2.TpuAsyncClient(transport=transport)
    credentials = (
        service_account.Credentials.from_service_account_info(dict(key), scopes=SCOPES)
        if key is not None
        else None  # Application Default Credentials
    )
    return tpu_v2.TpuAsyncClient(
        credentials=credentials, client_options=ClientOptions(api_endpoint=endpoint)
    )


def parse_key(data: Mapping[str, str]) -> dict[str, Any]:
    """The service account key in a Secret's (base64-decoded) `key.json`."""
    try:
        return dict(json.loads(data["key.json"]))
    except (KeyError, ValueError) as error:
        raise TpuRejected(f"credentialsSecret: no valid key.json ({error})") from error


class TpuApi:
    """A training's TPU through the Cloud TPU API: observe, create, delete."""

    def __init__(self, client: tpu_v2.TpuAsyncClient) -> None:
        self.client = client

    async def observe(
        self, ref: TrainingRef, tpu: TpuSpec, operation: str | None
    ) -> TpuObservation:
        try:
            node = await self._get_node(node_name(ref, tpu))
            queued = await self._get_queued_resource(ref, tpu) if tpu.spot else None
            foreign = _foreign(ref, node, queued)
            if foreign is not None:
                return TpuObservation(foreign=foreign)
            create_error, pending = None, False
            if queued is not None:
                create_error = _queued_resource_error(queued)
            if operation and node is None:
                op = await self.client.get_operation(
                    operations_pb2.GetOperationRequest(name=operation),
                    retry=None,
                    timeout=CALL_TIMEOUT,
                )
                pending = not op.done
                if op.HasField("error") and op.error.code:
                    create_error = op.error.message or f"gRPC code {op.error.code}"
            guest: dict[str, str] = {}
            if node is not None and node.state == tpu_v2.Node.State.READY:
                guest = await self._guest(node.name)
        except TRANSIENT as error:
            raise _transient(error) from error
        except gexc.GoogleAPICallError as error:  # permissions, bad project: say so, retry
            raise TransientTpuError(f"Cloud TPU API: {error}") from error
        if node is None:
            return TpuObservation(create_error=create_error, operation_pending=pending)
        endpoints = tuple(f"{e.ip_address}:{e.port}" for e in node.network_endpoints)
        return TpuObservation(
            node_state=node.state.name,
            health=node.health.name if node.health else None,
            endpoints=endpoints,
            create_error=create_error,
            guest=guest,
        )

    async def _get_node(self, name: str) -> tpu_v2.Node | None:
        try:
            return await self.client.get_node(name=name, retry=None, timeout=CALL_TIMEOUT)
        except gexc.NotFound:
            return None

    async def _get_queued_resource(
        self, ref: TrainingRef, tpu: TpuSpec
    ) -> tpu_v2.QueuedResource | None:
        try:
            return await self.client.get_queued_resource(
                name=queued_resource_name(ref, tpu), retry=None, timeout=CALL_TIMEOUT
            )
        except gexc.NotFound:
            return None

    async def _guest(self, name: str) -> dict[str, str]:
        response = await self.client.get_guest_attributes(
            tpu_v2.GetGuestAttributesRequest(name=name, query_path=f"{GUEST_NAMESPACE}/"),
            retry=None,
            timeout=CALL_TIMEOUT,
        )
        if not response.guest_attributes:
            return {}
        worker0 = response.guest_attributes[0]  # one entry per host; the trainer runs on 0
        return {
            item.key: item.value
            for item in worker0.query_value.items
            if item.namespace == GUEST_NAMESPACE
        }

    async def create(self, ref: TrainingRef, tpu: TpuSpec, node: Mapping[str, Any]) -> str | None:
        """Create the node (a queued resource when spot); the operation's name, if any."""
        try:
            if tpu.spot:
                queued = tpu_v2.QueuedResource(
                    tpu=tpu_v2.QueuedResource.Tpu(
                        node_spec=[
                            tpu_v2.QueuedResource.Tpu.NodeSpec(
                                parent=parent(tpu),
                                node_id=ref.node_id,
                                node=tpu_v2.Node(node),
                            )
                        ]
                    ),
                    spot=tpu_v2.QueuedResource.Spot(),
                )
                op = await self.client.create_queued_resource(
                    parent=parent(tpu),
                    queued_resource=queued,
                    queued_resource_id=ref.node_id,
                    retry=None,
                    timeout=CALL_TIMEOUT,
                )
            else:
                op = await self.client.create_node(
                    parent=parent(tpu),
                    node=tpu_v2.Node(node),
                    node_id=ref.node_id,
                    retry=None,
                    timeout=CALL_TIMEOUT,
                )
        except gexc.AlreadyExists:
            return None
        except TRANSIENT as error:
            raise _transient(error) from error
        except gexc.GoogleAPICallError as error:  # quota, invalid argument, permission
            raise TpuRejected(error.message or str(error)) from error
        return str(op.operation.name) or None

    async def delete(self, ref: TrainingRef, tpu: TpuSpec) -> None:
        """Delete the node (Spot: its queued resource, forced) if it is this training's; gone
        already, or someone else's, is left as it is."""
        try:
            if tpu.spot:
                queued = await self._get_queued_resource(ref, tpu)
                if queued is None or not ref.owns(_queued_labels(queued)):
                    return
                await self.client.delete_queued_resource(
                    tpu_v2.DeleteQueuedResourceRequest(name=queued.name, force=True),
                    retry=None,
                    timeout=CALL_TIMEOUT,
                )
            else:
                node = await self._get_node(node_name(ref, tpu))
                if node is None or not ref.owns(node.labels):
                    return
                await self.client.delete_node(name=node.name, retry=None, timeout=CALL_TIMEOUT)
        except gexc.NotFound:
            return
        except TRANSIENT as error:
            raise _transient(error) from error
        except gexc.GoogleAPICallError as error:
            raise TransientTpuError(f"deleting the TPU: {error}") from error

    async def owned_node_exists(self, ref: TrainingRef, tpu: TpuSpec) -> bool:
        """Whether this training's node is still there (a foreign one of its id is not)."""
        try:
            node = await self._get_node(node_name(ref, tpu))
        except gexc.GoogleAPICallError as error:
            raise _transient(error) from error
        return node is not None and ref.owns(node.labels)


def _foreign(
    ref: TrainingRef, node: tpu_v2.Node | None, queued: tpu_v2.QueuedResource | None
) -> str | None:
    """The name of a node or queued resource with this training's id that is not its own."""
    if node is not None and not ref.owns(node.labels):
        return str(node.name)
    if queued is not None and not ref.owns(_queued_labels(queued)):
        return str(queued.name)
    return None


def _queued_labels(queued: tpu_v2.QueuedResource) -> Mapping[str, str]:
    """A queued resource has no labels of its own: those of the node it asks for."""
    specs = queued.tpu.node_spec
    return specs[0].node.labels if specs else {}


def _queued_resource_error(queued: tpu_v2.QueuedResource) -> str | None:
    if queued.state.state == tpu_v2.QueuedResourceState.State.FAILED:
        error = queued.state.failed_data.error
        return str(error.message) or "queued resource FAILED"
    return None
