"""History retention: delete finished tasks (and their subtasks) older than a cutoff.

Finished tasks move to ``dxf_task_history`` / ``dxf_subtask_history`` and stay there; with
no retention these tables grow by roughly one task row and a dozen subtask rows per task.
:func:`purge_history` deletes them in small batches (short transactions, no long locks), so
it can run from the scheduler's cleanup pass or from ``purge --older-than``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, delete, func, select

from dxf_celery.storage import TaskManager
from dxf_celery.storage.engine import run_transaction
from dxf_celery.storage.tables import subtask_history_table, task_history_table, task_table

__all__ = ["DEFAULT_BATCH", "PurgeResult", "purge_history"]

#: Tasks deleted per transaction.
DEFAULT_BATCH = 500


@dataclass(frozen=True)
class PurgeResult:
    """How many history rows one purge deleted."""

    tasks: int = 0
    subtasks: int = 0


def purge_history(
    tm: TaskManager, older_than: timedelta, *, batch: int = DEFAULT_BATCH, now: datetime | None = None
) -> PurgeResult:
    """Delete history tasks that finished more than ``older_than`` ago, with their subtask history.

    A task's finish time is its ``end_time`` (else its last state change, else its creation).
    Orphan subtask history rows older than the cutoff (a task purged earlier, or one whose row
    was lost) go too. Returns the counts; live tasks are never touched.
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must be >= 0, got {older_than}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cutoff = (now or tm.server_time()) - older_than
    th, sh = task_history_table.c, subtask_history_table.c
    finished = func.coalesce(th.end_time, th.state_update_time, th.create_time)
    tasks = subtasks = 0

    def one_batch(conn: Connection) -> tuple[int, int]:
        ids = [row[0] for row in conn.execute(select(th.id).where(finished < cutoff).order_by(th.id).limit(batch))]
        if not ids:
            return 0, 0
        n_sub = conn.execute(delete(subtask_history_table).where(sh.task_id.in_(ids))).rowcount
        n_task = conn.execute(delete(task_history_table).where(th.id.in_(ids))).rowcount
        return int(n_task), int(n_sub)

    while True:
        n_task, n_sub = run_transaction(tm.write_engine, tm.url, one_batch)
        tasks += n_task
        subtasks += n_sub
        if n_task < batch:
            break

    sub_finished = func.coalesce(sh.end_time, sh.state_update_time, sh.create_time)
    in_history = select(th.id).where(th.id == sh.task_id).exists()
    live = select(task_table.c.id).where(task_table.c.id == sh.task_id).exists()
    orphans = delete(subtask_history_table).where(and_(sub_finished < cutoff, ~in_history, ~live))
    subtasks += int(run_transaction(tm.write_engine, tm.url, lambda conn: conn.execute(orphans).rowcount))
    return PurgeResult(tasks, subtasks)
