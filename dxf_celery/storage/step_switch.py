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


#: Subtask rows built and sent per ``INSERT`` (SQLAlchemy pages them further). A step's rows
#: are made a slice at a time: 100,000 row dicts held at once cost the scheduler's process
#: about 100 MB at its peak.
ROWS_PER_INSERT = 2000


def _check_plan(task: TaskBase, step: int, subtasks: Sequence[Subtask]) -> None:
    """Refuse a plan before anything is written: repeated ordinals, a meta that is not bytes."""
    ordinals = {s.ordinal for s in subtasks}
    if len(ordinals) != len(subtasks):
        raise InvalidTaskError(
            f"subtask ordinals of task {task.id} step {step} repeat; number them 1..n, one per subtask"
        )
    for s in subtasks:
        check_meta(s.meta, "subtask meta")


def _subtask_rows(task: TaskBase, step: int, subtasks: Sequence[Subtask]) -> list[dict[str, Any]]:
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


def _insert_subtasks(conn: Connection, task: TaskBase, step: int, subtasks: Sequence[Subtask]) -> None:
    """Insert ``subtasks`` (checked by :func:`_check_plan`) in slices of :data:`ROWS_PER_INSERT`."""
    for start in range(0, len(subtasks), ROWS_PER_INSERT):
        conn.execute(_INSERT_SUBTASKS, _subtask_rows(task, step, subtasks[start : start + ROWS_PER_INSERT]))


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
        _check_plan(task, next_step, subtasks)

        def txn(conn: Connection) -> bool:
            if not _switch_task(conn, task, next_state, next_step):
                return False
            _insert_subtasks(conn, task, next_step, subtasks)
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
        for task, _, step, subs in switches:
            _check_plan(task, step, subs)

        def txn(conn: Connection) -> list[bool]:
            out: list[bool] = []
            for task, next_state, next_step, subtasks in switches:
                savepoint = conn.begin_nested()
                try:
                    switched = _switch_task(conn, task, next_state, next_step)
                    if switched:
                        _insert_subtasks(conn, task, next_step, subtasks)
                except sa_exc.IntegrityError:
                    savepoint.rollback()
                    logger.warning("subtasks of task %s step %s exist already; step switch skipped", task.id, next_step)
                    out.append(False)
                    continue
                savepoint.commit()
                out.append(switched)
            return out

        return self._write(txn) if switches else []

    def switch_task_step_in_batch(
        self, task: Task, next_state: TaskState, next_step: int, subtasks: Sequence[Subtask]
    ) -> bool:
        """Step switch for plans too big for one transaction.

        Inserts in batches, skipping what an earlier (crashed or concurrent) attempt already
        inserted, then moves the task. The plan must be deterministic: finding more subtasks
        than planned raises :class:`UnstableSubtasksError`.
        """
        _check_plan(task, next_step, subtasks)

        def count_existing() -> int:
            stmt = select(func.count()).where(subtask_table.c.task_id == task.id, subtask_table.c.step == next_step)
            return int(self._read(lambda conn: conn.execute(stmt).scalar_one()))

        existing = count_existing()
        if existing > len(subtasks):
            raise UnstableSubtasksError(f"expected {len(subtasks)} subtasks for step {next_step}, found {existing}")
        pos = existing
        while pos < len(subtasks):
            end, size = pos, 0
            while end < len(subtasks) and (end == pos or size + len(subtasks[end].meta) <= MAX_SUBTASK_BATCH_BYTES):
                size += len(subtasks[end].meta)
                end += 1
            batch = subtasks[pos:end]
            try:
                self._write(lambda conn, b=batch: _insert_subtasks(conn, task, next_step, b))  # type: ignore[misc]
                pos = end
            except sa_exc.IntegrityError:
                # A concurrent scheduler inserted some of them: skip what exists now.
                found = count_existing()
                if found > len(subtasks) or found <= pos:
                    # More rows than planned, or rows that are not a prefix of our plan.
                    raise UnstableSubtasksError(
                        f"expected {len(subtasks)} subtasks for step {next_step}, found {found} that do not match"
                    ) from None
                pos = found
        return self._write(lambda conn: _switch_task(conn, task, next_state, next_step))
