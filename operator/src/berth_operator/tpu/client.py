"""The only module that talks to the Cloud TPU API (google-cloud-tpu's `tpu_v2.TpuAsyncClient`).

Calls are made without the library's own retries and with a short timeout, so a pass never
blocks for long: transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) surface as
`TransientTpuError`, which the kopf timer turns into a retry with backoff. Rejections that no
retry fixes (quota, an invalid accelerator, permissions) surface as `TpuRejected` with the API's
message. "Not found" on get/delete and "already exists" on create count as answers, not errors,
so a retried pass never duplicates a TPU.
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
    GUEST_NAMESPACE,
    node_id,
    node_name,
    parent,
    queued_resource_name,
)
from berth_operator.tpu.policy import TpuObservation

#: Seconds one API call may take before the pass gives up (and retries later).
CALL_TIMEOUT = 10.0
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
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

    async def observe(self, training: str, tpu: TpuSpec, operation: str | None) -> TpuObservation:
        try:
            node = await self._get_node(node_name(training, tpu))
            create_error, pending = None, False
            if tpu.spot:
                create_error = await self._queued_resource_error(training, tpu)
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

    async def _queued_resource_error(self, training: str, tpu: TpuSpec) -> str | None:
        try:
            queued = await self.client.get_queued_resource(
                name=queued_resource_name(training, tpu), retry=None, timeout=CALL_TIMEOUT
            )
        except gexc.NotFound:
            return None
        if queued.state.state == tpu_v2.QueuedResourceState.State.FAILED:
            error = queued.state.failed_data.error
            return error.message or "queued resource FAILED"
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

    async def create(self, training: str, tpu: TpuSpec, node: Mapping[str, Any]) -> str | None:
        """Create the node (a queued resource when spot); the operation's name, if any."""
        try:
            if tpu.spot:
                queued = tpu_v2.QueuedResource(
                    tpu=tpu_v2.QueuedResource.Tpu(
                        node_spec=[
                            tpu_v2.QueuedResource.Tpu.NodeSpec(
                                parent=parent(tpu),
                                node_id=node_id(training),
                                node=tpu_v2.Node(node),
                            )
                        ]
                    ),
                    spot=tpu_v2.QueuedResource.Spot(),
                )
                op = await self.client.create_queued_resource(
                    parent=parent(tpu),
                    queued_resource=queued,
                    queued_resource_id=node_id(training),
                    retry=None,
                    timeout=CALL_TIMEOUT,
                )
            else:
                op = await self.client.create_node(
                    parent=parent(tpu),
                    node=tpu_v2.Node(node),
                    node_id=node_id(training),
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

    async def delete(self, training: str, tpu: TpuSpec) -> None:
        """Delete the node (Spot: its queued resource, forced); gone already is fine."""
        try:
            if tpu.spot:
                await self.client.delete_queued_resource(
                    tpu_v2.DeleteQueuedResourceRequest(
                        name=queued_resource_name(training, tpu), force=True
                    ),
                    retry=None,
                    timeout=CALL_TIMEOUT,
                )
            else:
                await self.client.delete_node(
                    name=node_name(training, tpu), retry=None, timeout=CALL_TIMEOUT
                )
        except gexc.NotFound:
            return
        except TRANSIENT as error:
            raise _transient(error) from error
        except gexc.GoogleAPICallError as error:
            raise TransientTpuError(f"deleting the TPU: {error}") from error

    async def exists(self, training: str, tpu: TpuSpec) -> bool:
        try:
            return await self._get_node(node_name(training, tpu)) is not None
        except gexc.GoogleAPICallError as error:
            raise _transient(error) from error
