"""Submit: check a new task against the node table and history, and insert it.

Submit is the hot path of queue users (many small tasks per second), so it is one
transaction of two statements: one ``SELECT`` reads the node rows and whether the key was used
in history (the CPU check and the submitter's "can any node run it" come from those rows),
then ``INSERT .. RETURNING`` hands the stored task back (no re-read). A one-statement variant
on PostgreSQL (a data-modifying CTE) measured no faster, so it is not used. ``create_time`` is
stamped by the database: it breaks rank ties, and client clocks disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exists, insert, literal, select, true

from dxf_celery.errors import InvalidTaskError, TaskAlreadyExistsError
from dxf_celery.proto import ManagedNode, Task
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.nodes import node_of
from dxf_celery.storage.rows import task_from_row
from dxf_celery.storage.tables import node_table, task_history_table, task_table


@dataclass(frozen=True)
class CreatedTask:
    """A task just inserted, and the node rows its transaction saw (for the submitter's warning)."""

    task: Task
    nodes: list[ManagedNode]


def _nodes_and_history(key: str) -> Any:
    """Every node row (or one NULL row when there is none), each with "is ``key`` in history"."""
    one = select(literal(1).label("one")).subquery()
    in_history = exists(select(task_history_table.c.id).where(task_history_table.c.task_key == key))
    return (
        select(in_history.label("in_history"), *node_table.c)
        .select_from(one.outerjoin(node_table, true()))
        .order_by(node_table.c.host)
    )


def insert_task(conn: Connection, values: dict[str, Any]) -> CreatedTask:
    """Insert the pending task ``values`` unless a check refuses it (raises); a duplicate live
    key raises the driver's IntegrityError, as for any insert."""
    rows = conn.execute(_nodes_and_history(values["task_key"])).all()
    nodes = [node_of(r) for r in rows if r.host is not None]
    cpu = next((n.cpu_count for n in nodes if n.cpu_count > 0), None)  # the first node by host, as DXF
    key, concurrency = values["task_key"], values["concurrency"]
    if cpu is not None and concurrency > cpu:
        raise InvalidTaskError(
            f"task concurrency {concurrency} is larger than the CPU slots ({cpu}) of the registered nodes; "
            f"lower concurrency or give the nodes more slots (dxf_node_slots)"
        )
    if rows[0].in_history:
        raise TaskAlreadyExistsError(f"task key {key!r} was used by a finished task (in history); pick a new key")
    stmt = insert(task_table).values(**values, create_time=server_now(), state_update_time=server_now())
    row = conn.execute(stmt.returning(*task_table.c)).one()
    return CreatedTask(task_from_row(row), nodes)
