"""Why a pending task waits for slots, judged from the tables alone so any process can ask.

The scheduler knows more (its reservations, its type's eligible instances) but lives in one
worker; a client's ``show`` reads the node table and the slots in use (an aggregate) instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from dxf_celery.proto import ManagedNode, Task, TaskState
from dxf_celery.scheduler.nodes import filter_by_scope
from dxf_celery.storage import TaskManager


def slot_wait_reason(tm: TaskManager, task: Task, nodes: Sequence[ManagedNode] | None = None) -> str | None:
    """Why ``task`` (pending) cannot start for lack of free slots on its nodes, or None.

    A task whose scope no node has is not judged here (the caller says so first); a task
    whose nodes all have ``concurrency`` slots free returns None: it starts on a next pass.
    """
    if task.state != TaskState.PENDING:
        return None
    if nodes is None:
        nodes = tm.get_all_nodes()
    eligible = filter_by_scope(nodes, task.target_scope)
    if not eligible or any(n.cpu_count <= 0 for n in eligible):
        return None  # no node to judge, or one whose slots are unknown
    used = tm.get_used_slots_on_nodes()
    if any(used.get(n.id, 0) + task.concurrency <= n.cpu_count for n in eligible):
        return None
    busy = ", ".join(f"{n.id} {used.get(n.id, 0)}/{n.cpu_count}" for n in eligible[:5])
    more = f" and {len(eligible) - 5} more" if len(eligible) > 5 else ""
    return (
        f"none of its {len(eligible)} node(s) has {task.concurrency} free slot(s) (slots in use: {busy}{more}): "
        f"it waits for higher-ranked or earlier work to finish, holding no slots meanwhile"
    )
