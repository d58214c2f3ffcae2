"""Step switch: move a task to its next step and insert that step's subtasks.

The task update is the ``switch_step`` verb of the transition table, guarded by the state
*and* the step the scheduler read; a unique key on ``(task_id, step, ordinal)`` makes a
second scheduler planning the same step fail instead of doubling the subtasks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlalchemy import exc as sa_exc

from dxf_celery.errors import InvalidTaskError, UnstableSubtasksError
from dxf_celery.proto import Subtask, SubtaskState, Task, TaskBase, TaskState
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.rows import NO_CHECKPOINT, check_meta
from dxf_celery.storage.tables import subtask_table, task_table
from dxf_celery.storage.task_transitions import move_task
from dxf_celery.transitions import Verb

logger = logging.getLogger(__name__)

#: Subtask rows are stamped by the database clock (one for the whole statement's rows).
_INSERT_SUBTASKS = insert(subtask_table).values(create_time=server_now())

#: A batched step switch inserts at most this many bytes of subtask meta per transaction.
MAX_SUBTASK_BATCH_BYTES = 16 * 1024 * 1024


def _subtask_rows(task: TaskBase, step: int, subtasks: Sequence[Subtask]) -> list[dict[str, Any]]:
    ordinals = [s.ordinal for s in subtasks]
    if len(set(ordinals)) != len(ordinals):
        raise InvalidTaskError(
            f"subtask ordinals of task {task.id} step {step} repeat; number them 1..n, one per subtask"
        )
    return [
        {
            "task_id": task.id,
            "step": step,
            "type": s.type or task.type,
            "exec_id": s.exec_id,
            "state": SubtaskState.PENDING.value,
            "concurrency": s.concurrency or task.concurrency,
            "ordinal": s.ordinal,
            "meta": check_meta(s.meta, "subtask meta"),
            "summary": "{}",
            "checkpoint": NO_CHECKPOINT,
        }
        for s in subtasks
    ]


def _switch_task(conn: Connection, task: Task, next_state: TaskState, next_step: int) -> bool:
    values: dict[str, Any] = {"step": next_step, "meta": check_meta(task.meta)}
    if task.state == TaskState.PENDING:
        values["start_time"] = server_now()
    return move_task(
        conn,
        Verb.SWITCH_STEP,
        task.id,
        expected=task.state,
        to_state=next_state,
        values=values,
        where=(task_table.c.step == task.step,),
    )


class StepSwitch(StorageBase):
    """``switch_step``: the small plan in one transaction, the big plan in batches."""

    def switch_task_step(self, task: Task, next_state: TaskState, next_step: int, subtasks: Sequence[Subtask]) -> bool:
        """One transaction: move the task to ``next_step`` (guarded by its state and step) and
        insert the subtasks. Returns False, inserting nothing, when another scheduler won."""
        rows = _subtask_rows(task, next_step, subtasks)

        def txn(conn: Connection) -> bool:
            if not _switch_task(conn, task, next_state, next_step):
                return False
            if rows:
                conn.execute(_INSERT_SUBTASKS, rows)
            return True

        try:
            return self._write(txn)
        except sa_exc.IntegrityError:
            # Our guarded update held the task row, so the clash is with rows left by an
            # earlier batched attempt of the same step: that plan stands, ours is dropped.
            logger.warning("subtasks of task %s step %s exist already; step switch skipped", task.id, next_step)
            return False

    def switch_task_steps(self, switches: Sequence[tuple[Task, TaskState, int, Sequence[Subtask]]]) -> list[bool]:
        """Several tasks' step switches in one transaction; one result per switch, in order.

        Each is what :meth:`switch_task_step` does (the update guarded by the task's state
        and step, then its inserts) inside a savepoint of its own: one that loses its guard
        or meets rows of an earlier attempt (the unique key) is False and leaves the others.
        """
        prepared = [(task, state, step, _subtask_rows(task, step, subs)) for task, state, step, subs in switches]

        def txn(conn: Connection) -> list[bool]:
            out: list[bool] = []
            for task, next_state, next_step, rows in prepared:
                savepoint = conn.begin_nested()
                try:
                    switched = _switch_task(conn, task, next_state, next_step)
                    if switched and rows:
                        conn.execute(_INSERT_SUBTASKS, rows)
                except sa_exc.IntegrityError:
                    savepoint.rollback()
                    logger.warning("subtasks of task %s step %s exist already; step switch skipped", task.id, next_step)
                    out.append(False)
                    continue
                savepoint.commit()
                out.append(switched)
            return out

        return self._write(txn) if prepared else []

    def switch_task_step_in_batch(
        self, task: Task, next_state: TaskState, next_step: int, subtasks: Sequence[Subtask]
    ) -> bool:
        """Step switch for plans too big for one transaction.

        Inserts in batches, skipping what an earlier (crashed or concurrent) attempt already
        inserted, then moves the task. The plan must be deterministic: finding more subtasks
        than planned raises :class:`UnstableSubtasksError`.
        """
        rows = _subtask_rows(task, next_step, subtasks)

        def count_existing() -> int:
            stmt = select(func.count()).where(subtask_table.c.task_id == task.id, subtask_table.c.step == next_step)
            return int(self._read(lambda conn: conn.execute(stmt).scalar_one()))

        existing = count_existing()
        if existing > len(rows):
            raise UnstableSubtasksError(f"expected {len(rows)} subtasks for step {next_step}, found {existing}")
        pos = existing
        while pos < len(rows):
            end, size = pos, 0
            while end < len(rows) and (end == pos or size + len(rows[end]["meta"]) <= MAX_SUBTASK_BATCH_BYTES):
                size += len(rows[end]["meta"])
                end += 1
            batch = rows[pos:end]
            try:
                self._write(lambda conn, b=batch: conn.execute(_INSERT_SUBTASKS, b))  # type: ignore[misc]
                pos = end
            except sa_exc.IntegrityError:
                # A concurrent scheduler inserted some of them: skip what exists now.
                found = count_existing()
                if found > len(rows) or found <= pos:
                    # More rows than planned, or rows that are not a prefix of our plan.
                    raise UnstableSubtasksError(
                        f"expected {len(rows)} subtasks for step {next_step}, found {found} that do not match"
                    ) from None
                pos = found
        return self._write(lambda conn: _switch_task(conn, task, next_state, next_step))
