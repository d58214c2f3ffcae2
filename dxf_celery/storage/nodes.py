"""Nodes: registration, heartbeats and removal of the worker nodes that run subtasks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, insert, or_, select, update
from sqlalchemy import exc as sa_exc

from dxf_celery.proto import ManagedNode
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import read_server_now, server_now
from dxf_celery.storage.tables import node_table


def cpu_count_of(conn: Connection, role: str | None) -> int | None:
    """CPU count of the first registered node (of ``role`` if given), inside a transaction."""
    stmt = select(node_table.c.cpu_count).where(node_table.c.cpu_count > 0).order_by(node_table.c.host).limit(1)
    if role is not None:
        stmt = stmt.where(node_table.c.role == role)
    value = conn.execute(stmt).scalar()
    return int(value) if value is not None else None


def node_of(r: Any) -> ManagedNode:
    """A node row read back."""
    return ManagedNode(r.host, r.role, r.cpu_count, r.heartbeat, task_types_of(r.task_types))


def _silent_since(cutoff: datetime) -> ColumnElement[bool]:
    return or_(node_table.c.heartbeat < cutoff, node_table.c.heartbeat.is_(None))


class Nodes(StorageBase):
    """The node table (DXF's ``dist_framework_meta`` plus a heartbeat)."""

    def init_meta(
        self, exec_id: str, role: str = "", cpu_count: int | None = None, task_types: Iterable[str] | None = None
    ) -> None:
        """Register (or refresh) this node, updating its CPU count, role and task types.

        ``task_types`` are the types the node's process registered (None = unknown: submit
        then never warns about this node).
        """
        self._upsert_node(exec_id, role, cpu_count, task_types, update_role=True)

    def recover_meta(
        self, exec_id: str, role: str = "", cpu_count: int | None = None, task_types: Iterable[str] | None = None
    ) -> None:
        """Re-insert this node if the scheduler removed it; the role of a live row is kept, its types refreshed."""
        self._upsert_node(exec_id, role, cpu_count, task_types, update_role=False)

    def _upsert_node(
        self, exec_id: str, role: str, cpu_count: int | None, task_types: Iterable[str] | None, *, update_role: bool
    ) -> None:
        cpu = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        types = None if task_types is None else json.dumps(sorted(set(task_types)))

        def txn(conn: Connection) -> None:
            values: dict[str, Any] = {"cpu_count": cpu, "heartbeat": server_now(), "task_types": types}
            if update_role:
                values["role"] = role
            if conn.execute(update(node_table).where(node_table.c.host == exec_id).values(**values)).rowcount == 0:
                conn.execute(
                    insert(node_table).values(
                        host=exec_id, role=role, cpu_count=cpu, heartbeat=server_now(), task_types=types
                    )
                )

        try:
            self._write(txn)
        except sa_exc.IntegrityError:
            # Inserted concurrently by the same node's other loop: the update now matches.
            self._write(txn)

    def heartbeat(self, exec_id: str) -> bool:
        """Touch this node's heartbeat; False when its row is gone (it was deemed dead)."""
        stmt = update(node_table).where(node_table.c.host == exec_id).values(heartbeat=server_now())
        return bool(self._write(lambda conn: conn.execute(stmt).rowcount))

    def get_all_nodes(self) -> list[ManagedNode]:
        stmt = select(node_table).order_by(node_table.c.host)
        return self._read(lambda conn: [node_of(r) for r in conn.execute(stmt)])

    def get_nodes_at_server_time(self) -> tuple[datetime, list[ManagedNode]]:
        """Every node and the database's now, read together: heartbeats are judged on that clock."""
        stmt = select(node_table).order_by(node_table.c.host)

        def txn(conn: Connection) -> tuple[datetime, list[ManagedNode]]:
            now = read_server_now(conn)
            return now, [node_of(r) for r in conn.execute(stmt)]

        return self._read(txn)

    def get_dead_nodes(self, ttl_seconds: float) -> list[str]:
        """Nodes whose last heartbeat is older than ``ttl_seconds`` on the database's clock."""

        def txn(conn: Connection) -> list[str]:
            cutoff = read_server_now(conn) - timedelta(seconds=ttl_seconds)
            stmt = select(node_table.c.host).where(_silent_since(cutoff))
            return sorted(r[0] for r in conn.execute(stmt))

        return self._read(txn)

    def delete_dead_nodes(self, exec_ids: Sequence[str], *, silent_since: datetime | None = None) -> int:
        """Delete the nodes ``exec_ids``; with ``silent_since``, only those whose heartbeat is
        still older than it (a node that heartbeated since it was judged stays)."""
        if not exec_ids:
            return 0
        stmt = delete(node_table).where(node_table.c.host.in_(list(exec_ids)))
        if silent_since is not None:
            stmt = stmt.where(_silent_since(silent_since))
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def delete_node(self, exec_id: str) -> bool:
        return self.delete_dead_nodes([exec_id]) > 0

    def get_cpu_count_of_node(self, role: str | None = None) -> int | None:
        """CPU count of the first registered node (of ``role`` if given); None with no node."""
        return self._read(lambda conn: cpu_count_of(conn, role))


def task_types_of(stored: str | None) -> tuple[str, ...] | None:
    """The ``task_types`` column read back; None when unknown (NULL, or not a JSON list of strings)."""
    if stored is None:
        return None
    try:
        types = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        return None
    return tuple(types)
