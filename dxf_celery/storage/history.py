"""History and GC: finished tasks and their subtasks move to the history tables; old
subtask history is deleted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from dxf_celery.proto import TASK_DONE_STATES, Task
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import read_server_now, server_now
from dxf_celery.storage.rows import check_meta, values_of
from dxf_celery.storage.tables import subtask_history_table, subtask_table, task_history_table, task_table

#: Subtask history older than this is deleted by :meth:`History.gc_subtasks` (DXF: 14 days).
DEFAULT_SUBTASK_KEEP_SECONDS = 14 * 24 * 3600.0

_DONE = values_of(TASK_DONE_STATES)


class History(StorageBase):
    """The cleanup loop's storage: transfer to history, then garbage-collect it."""

    def transfer_tasks_to_history(self, tasks: Sequence[Task]) -> int:
        """Move finished tasks (meta as given, e.g. redacted) and their subtasks to history.

        Only tasks still live and done (succeed/reverted/failed) move; the meta update locks
        each row first, so two cleaners racing on the same task move it once. Returns the
        number of tasks moved.
        """
        if not tasks:
            return 0
        metas = {t.id: check_meta(t.meta) for t in tasks}
        task_cols = [c.name for c in task_table.columns]
        sub_cols = [c.name for c in subtask_table.columns]

        def txn(conn: Connection) -> int:
            ids = [
                task_id
                for task_id, meta in metas.items()
                if conn.execute(
                    update(task_table)
                    .where(task_table.c.id == task_id, task_table.c.state.in_(_DONE))
                    .values(meta=meta, state_update_time=server_now())
                ).rowcount
                > 0
            ]
            if not ids:
                return 0
            conn.execute(
                insert(subtask_history_table).from_select(
                    sub_cols, select(*[subtask_table.c[c] for c in sub_cols]).where(subtask_table.c.task_id.in_(ids))
                )
            )
            conn.execute(delete(subtask_table).where(subtask_table.c.task_id.in_(ids)))
            conn.execute(
                insert(task_history_table).from_select(
                    task_cols, select(*[task_table.c[c] for c in task_cols]).where(task_table.c.id.in_(ids))
                )
            )
            return int(conn.execute(delete(task_table).where(task_table.c.id.in_(ids))).rowcount)

        return self._write(txn)

    def gc_subtasks(self, keep_seconds: float = DEFAULT_SUBTASK_KEEP_SECONDS) -> int:
        """Delete subtask history rows last updated more than ``keep_seconds`` ago."""

        def txn(conn: Connection) -> int:
            cutoff = read_server_now(conn) - timedelta(seconds=keep_seconds)
            sh = subtask_history_table.c
            stmt = delete(subtask_history_table).where(
                or_(sh.state_update_time < cutoff, and_(sh.state_update_time.is_(None), sh.create_time < cutoff))
            )
            return int(conn.execute(stmt).rowcount)

        return self._write(txn)
