"""An in-process fake of the Cloud TPU v2 API: gRPC generic handlers for the `Tpu` service and
`google.longrunning.Operations`, messages (de)serialised with tpu_v2's own types.

The real `TpuAsyncClient` (the operator's, over an insecure channel) talks to it; tests drive
node states, guest attributes, failures and outages:

    fake = FakeTpu().start()            # fake.endpoint == "127.0.0.1:<port>"
    fake.set_state("bert", "READY")
    fake.set_guest("bert", step="10", loss="2.5")
    fake.plant_node("projects/p/locations/z/nodes/bert", {"team": "b"})  # not the operator's
    fake.fail_create = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Quota exceeded")
    fake.unavailable = True             # every call answers UNAVAILABLE
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.cloud import tpu_v2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

TPU_SERVICE = "google.cloud.tpu.v2.Tpu"
OPERATIONS_SERVICE = "google.longrunning.Operations"


def _proto(cls: Any) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """(deserialize, serialize) of a proto-plus message class."""
    return cls.deserialize, cls.serialize


class FakeTpu:
    """In-memory nodes, queued resources and operations behind a real gRPC server."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[str, tpu_v2.Node] = {}
        self.queued: dict[str, tpu_v2.QueuedResource] = {}
        self.operations: dict[str, operations_pb2.Operation] = {}
        self.guest: dict[str, dict[str, str]] = {}
        self.created: list[str] = []  # node names, in creation order
        self.deleted: list[str] = []
        self.fail_create: tuple[grpc.StatusCode, str] | None = None  # the create LRO fails
        self.unavailable = False
        self.refused = 0  # calls answered UNAVAILABLE
        self.calls = 0  # calls received, answered or not
        self._ids = itertools.count(1)
        self.server: grpc.Server | None = None
        self.endpoint = ""

    # --- test controls -------------------------------------------------------------------
    def node(self, node_id: str) -> tpu_v2.Node | None:
        with self.lock:
            return next((n for k, n in self.nodes.items() if k.endswith(f"/{node_id}")), None)

    def plant_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A READY node that someone else made (not through the API's create): `name` is its
        full resource name, `labels` its GCP labels."""
        with self.lock:
            self.nodes[name] = tpu_v2.Node(
                name=name, state=tpu_v2.Node.State.READY, labels=labels or {}
            )

    def set_state(self, node_id: str, state: str) -> None:
        with self.lock:
            for key, node in self.nodes.items():
                if key.endswith(f"/nodes/{node_id}"):
                    node.state = tpu_v2.Node.State[state]
                    node.health = tpu_v2.Node.Health.HEALTHY
                    return
        raise KeyError(node_id)

    def set_guest(self, node_id: str, **values: str) -> None:
        with self.lock:
            for key in self.nodes:
                if key.endswith(f"/nodes/{node_id}"):
                    self.guest.setdefault(key, {}).update(values)
                    return
        raise KeyError(node_id)

    # --- the service -----------------------------------------------------------------------
    def _check(self, context: grpc.ServicerContext) -> None:
        self.calls += 1
        if self.unavailable:
            self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake: the service is unavailable")

    def _operation(self, response: Any = None, error: tuple[grpc.StatusCode, str] | None = None):
        op = operations_pb2.Operation(
            name=f"projects/fake/locations/fake/operations/op-{next(self._ids)}", done=True
        )
        if error is not None:
            op.error.CopyFrom(status_pb2.Status(code=error[0].value[0], message=error[1]))
        elif response is not None:
            op.response.CopyFrom(
                any_pb2.Any(
                    type_url=f"type.googleapis.com/{type(response).meta.full_name}",
                    value=type(response).serialize(response),
                )
            )
        self.operations[op.name] = op
        return op

    def _new_node(self, parent: str, node_id: str, node: tpu_v2.Node) -> tpu_v2.Node:
        created = tpu_v2.Node(node)
        created.name = f"{parent}/nodes/{node_id}"
        created.state = tpu_v2.Node.State.CREATING
        created.network_endpoints = [tpu_v2.NetworkEndpoint(ip_address="10.0.0.2", port=8470)]
        self.nodes[created.name] = created
        self.guest.pop(created.name, None)
        self.created.append(created.name)
        return created

    def GetNode(self, request: tpu_v2.GetNodeRequest, context: grpc.ServicerContext):
        self._check(context)
        with self.lock:
            node = self.nodes.get(request.name)
            if node is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name} not found")
            return tpu_v2.Node(node)

    def CreateNode(self, request: tpu_v2.CreateNodeRequest, context: grpc.ServicerContext):
        self._check(context)
        with self.lock:
            name = f"{request.parent}/nodes/{request.node_id}"
            if name in self.nodes:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"node {name} exists")
            if self.fail_create is not None:
                return self._operation(error=self.fail_create)
            return self._operation(self._new_node(request.parent, request.node_id, request.node))

    def DeleteNode(self, request: tpu_v2.DeleteNodeRequest, context: grpc.ServicerContext):
        self._check(context)
        with self.lock:
            if self.nodes.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name} not found")
            self.deleted.append(request.name)
            return self._operation()

    def GetGuestAttributes(
        self, request: tpu_v2.GetGuestAttributesRequest, context: grpc.ServicerContext
    ):
        self._check(context)
        with self.lock:
            if request.name not in self.nodes:
                context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name} not found")
            namespace = request.query_path.rstrip("/")
            items = [
                tpu_v2.GuestAttributesEntry(namespace=namespace, key=k, value=v)
                for k, v in self.guest.get(request.name, {}).items()
            ]
            return tpu_v2.GetGuestAttributesResponse(
                guest_attributes=[
                    tpu_v2.GuestAttributes(
                        query_path=request.query_path,
                        query_value=tpu_v2.GuestAttributesValue(items=items),
                    )
                ]
            )

    def CreateQueuedResource(
        self, request: tpu_v2.CreateQueuedResourceRequest, context: grpc.ServicerContext
    ):
        self._check(context)
        with self.lock:
            name = f"{request.parent}/queuedResources/{request.queued_resource_id}"
            if name in self.queued:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} exists")
            if self.fail_create is not None:
                return self._operation(error=self.fail_create)
            queued = tpu_v2.QueuedResource(request.queued_resource)
            queued.name = name
            queued.state = tpu_v2.QueuedResourceState(state=tpu_v2.QueuedResourceState.State.ACTIVE)
            self.queued[name] = queued
            for spec in queued.tpu.node_spec:
                self._new_node(spec.parent, spec.node_id, spec.node)
            return self._operation(queued)

    def GetQueuedResource(
        self, request: tpu_v2.GetQueuedResourceRequest, context: grpc.ServicerContext
    ):
        self._check(context)
        with self.lock:
            queued = self.queued.get(request.name)
            if queued is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            return tpu_v2.QueuedResource(queued)

    def DeleteQueuedResource(
        self, request: tpu_v2.DeleteQueuedResourceRequest, context: grpc.ServicerContext
    ):
        self._check(context)
        with self.lock:
            queued = self.queued.pop(request.name, None)
            if queued is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            for spec in queued.tpu.node_spec:
                name = f"{spec.parent}/nodes/{spec.node_id}"
                if self.nodes.pop(name, None) is not None:
                    self.deleted.append(name)
            return self._operation()

    def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ):
        self._check(context)
        with self.lock:
            op = self.operations.get(request.name)
            if op is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            return op

    def start(self) -> FakeTpu:
        op = (operations_pb2.Operation.FromString, operations_pb2.Operation.SerializeToString)
        tpu_methods: dict[str, tuple[Any, Any, Any]] = {
            "GetNode": (self.GetNode, tpu_v2.GetNodeRequest, tpu_v2.Node),
            "CreateNode": (self.CreateNode, tpu_v2.CreateNodeRequest, None),
            "DeleteNode": (self.DeleteNode, tpu_v2.DeleteNodeRequest, None),
            "GetGuestAttributes": (
                self.GetGuestAttributes,
                tpu_v2.GetGuestAttributesRequest,
                tpu_v2.GetGuestAttributesResponse,
            ),
            "CreateQueuedResource": (
                self.CreateQueuedResource,
                tpu_v2.CreateQueuedResourceRequest,
                None,
            ),
            "GetQueuedResource": (
                self.GetQueuedResource,
                tpu_v2.GetQueuedResourceRequest,
                tpu_v2.QueuedResource,
            ),
            "DeleteQueuedResource": (
                self.DeleteQueuedResource,
                tpu_v2.DeleteQueuedResourceRequest,
                None,
            ),
        }
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=_proto(request)[0],
                response_serializer=_proto(response)[1] if response else op[1],
            )
            for method, (fn, request, response) in tpu_methods.items()
        }
        operations = {
            "GetOperation": grpc.unary_unary_rpc_method_handler(
                self.GetOperation,
                request_deserializer=operations_pb2.GetOperationRequest.FromString,
                response_serializer=op[1],
            )
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(TPU_SERVICE, handlers),
                grpc.method_handlers_generic_handler(OPERATIONS_SERVICE, operations),
            )
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.endpoint = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)
