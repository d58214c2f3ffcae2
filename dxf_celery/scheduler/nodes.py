"""The scheduler's view of the worker nodes: who is alive, and who may run a task.

Liveness comes from heartbeats in the node table (DXF asks etcd): a node silent for longer
than the TTL is deleted, so planning stops choosing it and the balancer moves its subtasks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from dxf_celery.proto import ManagedNode
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)

#: Nodes with this role serve tasks submitted without a target scope, when any exist.
BACKGROUND_ROLE = "background"


def filter_by_scope(nodes: Sequence[ManagedNode], scope: str) -> list[ManagedNode]:
    """Nodes that may run a task of ``scope``.

    Scope "" prefers the dedicated "background" nodes when there are any, else every node
    without a role; any other scope takes exactly the nodes with that role.
    """
    if scope == "":
        background = [n for n in nodes if n.role == BACKGROUND_ROLE]
        if background:
            return background
    return [n for n in nodes if n.role == scope]


class NodeManager:
    """Deletes dead nodes and caches the live ones for the rest of the pass."""

    def __init__(self, task_manager: TaskManager) -> None:
        self._tm = task_manager
        self._lock = threading.Lock()
        self._nodes: list[ManagedNode] = []

    def maintain_live_nodes(self, ttl_seconds: float) -> list[str]:
        """Delete the nodes whose heartbeat is older than ``ttl_seconds``; returns their ids."""
        dead = self._tm.get_dead_nodes(ttl_seconds)
        if dead:
            self._tm.delete_dead_nodes(dead)
            logger.warning("deleted nodes without a heartbeat for %.1fs: %s", ttl_seconds, ", ".join(dead))
        return dead

    def refresh_nodes(self) -> list[ManagedNode]:
        """Reload the node table into the cache (ordered by id)."""
        nodes = self._tm.get_all_nodes()
        with self._lock:
            self._nodes = nodes
        return list(nodes)

    def get_nodes(self) -> list[ManagedNode]:
        """The cached nodes, as of the last refresh."""
        with self._lock:
            return list(self._nodes)
