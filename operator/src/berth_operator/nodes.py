"""What the operator knows of a worker's node, and when that node counts as lost (pure).

A dead node (kernel panic, power, a partition) never confirms a deletion: its pods stay in the
API server, Running and then Terminating, until the Node object goes. The node lifecycle
controller notices first: after `--node-monitor-grace-period` without a heartbeat it sets the
Node's Ready condition to Unknown and every pod on it to not Ready. That is the operator's cue.

    >>> node_health({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    <NodeHealth.UNREACHABLE: 'Unreachable'>
    >>> node_health(None)
    <NodeHealth.GONE: 'Gone'>
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class NodeHealth(enum.StrEnum):
    READY = "Ready"
    #: The kubelet reports the node not ready (e.g. its container runtime is down).
    NOT_READY = "NotReady"
    #: The kubelet stopped reporting: Ready is Unknown (the node lifecycle controller's verdict).
    UNREACHABLE = "Unreachable"
    #: No Node object: deleted (pod garbage collection follows).
    GONE = "Gone"

    @property
    def dead(self) -> bool:
        """No kubelet will finish a deletion here: its pods can be deleted with grace 0."""
        return self in (NodeHealth.UNREACHABLE, NodeHealth.GONE)


def node_health(node: Mapping[str, Any] | None) -> NodeHealth:
    """The health of `node` (a Node object as read, None when it does not exist)."""
    if node is None:
        return NodeHealth.GONE
    for condition in (node.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            status = condition.get("status")
            if status == "True":
                return NodeHealth.READY
            return NodeHealth.NOT_READY if status == "False" else NodeHealth.UNREACHABLE
    return NodeHealth.UNREACHABLE  # never reported (kubelet gone before its first status)


def describe(node: str, health: NodeHealth) -> str:
    """Why a worker on `node` is lost, for status.message and events.

    >>> describe("n1", NodeHealth.UNREACHABLE)
    'node n1 is unreachable (Ready Unknown)'
    """
    return {
        NodeHealth.READY: f"node {node} is ready",
        NodeHealth.NOT_READY: f"node {node} is not ready (Ready False)",
        NodeHealth.UNREACHABLE: f"node {node} is unreachable (Ready Unknown)",
        NodeHealth.GONE: f"node {node} is gone",
    }[health]
