"""Task transitions: every task-state compare-and-set, driven by :data:`dxf_celery.transitions.TRANSITIONS`.

:func:`move_task` is the one guarded update: ``UPDATE task SET state = <to> WHERE id = :id
AND state IN (<from-states of the verb>)``. Losing the race (or calling a verb from a state
the table does not list) is a silent no-op that returns False, except ``modify_task_by_id``
which raises :class:`TaskChangedError` (DESIGN §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, update

from dxf_celery.errors import TaskChangedError, TaskNotFoundError, TaskStateNotAllowedError
from dxf_celery.proto import (
    STEP_DONE,
    TASK_DONE_STATES,
    ModifyParam,
    SubtaskState,
    Task,
    TaskState,
    serialize_error,
)
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.rows import check_meta, values_of
from dxf_celery.storage.tables import subtask_table, task_table
from dxf_celery.transitions import MODIFIABLE_TASK_STATES, TRANSITIONS, Verb

_RETRYABLE_SUBTASK_STATES = values_of((SubtaskState.FAILED, SubtaskState.CANCELED))
_LIVE_SUBTASK_STATES = values_of((SubtaskState.PENDING, SubtaskState.RUNNING, SubtaskState.PAUSED))


def move_task(
    conn: Connection,
    verb: Verb,
    task_id: int,
    *,
    expected: TaskState | None = None,
    to_state: TaskState | None = None,
    values: dict[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> bool:
    """Apply ``verb`` to one task in ``conn``'s transaction; True when the row moved.

    ``expected`` narrows the guard to the state the caller read (it must be one of the
    verb's from-states); ``to_state`` picks the target of a verb with several
    (``finish_modifying``). A done target also stamps ``end_time``.
    """
    t = TRANSITIONS[verb]
    froms = t.from_states if expected is None else t.from_states & {expected}
    target = t.to_state if to_state is None else to_state
    if not froms or target is None or target not in t.targets():
        return False
    row: dict[str, Any] = {"state": target.value, "state_update_time": server_now()}
    if target in TASK_DONE_STATES:
        row["end_time"] = server_now()
    row.update(values or {})
    stmt = (
        update(task_table)
        .where(task_table.c.id == task_id, task_table.c.state.in_(values_of(froms)), *where)
        .values(**row)
    )
    return bool(conn.execute(stmt).rowcount > 0)


class TaskTransitions(StorageBase):
    """One method per verb of the table (named after it); all take the task id."""

    def _move(self, verb: Verb, task_id: int, **kwargs: Any) -> bool:
        return self._write(lambda conn: move_task(conn, verb, task_id, **kwargs))

    # ---- user side

    def request_cancel(self, task_id: int) -> bool:
        """pending/running/awaiting-resolution → cancelling; False when not cancellable."""
        return self._move(Verb.REQUEST_CANCEL, task_id)

    def request_pause(self, task_id: int) -> bool:
        """pending/running → pausing; False when the task is in no such state."""
        return self._move(Verb.REQUEST_PAUSE, task_id)

    def request_resume(self, task_id: int) -> bool:
        """paused → resuming; False when the task is not paused."""
        return self._move(Verb.REQUEST_RESUME, task_id)

    def resolve(self, task_id: int) -> bool:
        """Manual recovery: failed/canceled subtasks of the current step → pending, task → running."""

        def txn(conn: Connection) -> bool:
            row = conn.execute(
                select(task_table.c.step).where(
                    task_table.c.id == task_id,
                    task_table.c.state.in_(values_of(TRANSITIONS[Verb.RESOLVE].from_states)),
                )
            ).first()
            if row is None:
                return False
            conn.execute(
                update(subtask_table)
                .where(
                    subtask_table.c.task_id == task_id,
                    subtask_table.c.step == row.step,
                    subtask_table.c.state.in_(_RETRYABLE_SUBTASK_STATES),
                )
                .values(state=SubtaskState.PENDING.value, error=None, state_update_time=server_now(), end_time=None)
            )
            return move_task(conn, Verb.RESOLVE, task_id, values={"error": None})

        return self._write(txn)

    def modify_task_by_id(self, task_id: int, param: ModifyParam) -> None:
        """``request_modify``: move a task to ``modifying``; it must still be in ``param.prev_state``.

        Raises :class:`TaskStateNotAllowedError` for a state that cannot be modified,
        :class:`TaskNotFoundError` and :class:`TaskChangedError` when the state moved on.
        """
        if not TRANSITIONS[Verb.REQUEST_MODIFY].allows(param.prev_state):
            raise TaskStateNotAllowedError(
                f"a task in state {param.prev_state.value} cannot be modified; "
                f"only {', '.join(s.value for s in MODIFIABLE_TASK_STATES)} tasks can"
            )

        def txn(conn: Connection) -> None:
            row = conn.execute(select(task_table.c.state).where(task_table.c.id == task_id)).first()
            if row is None:
                raise TaskNotFoundError(f"task {task_id} not found")
            if row.state != param.prev_state.value:
                raise TaskChangedError(f"task {task_id} is {row.state}, not {param.prev_state.value}; read it again")
            moved = move_task(
                conn, Verb.REQUEST_MODIFY, task_id, expected=param.prev_state, values={"modify_params": param.to_json()}
            )
            if not moved:
                raise TaskChangedError(f"task {task_id} changed state while being modified; read it again")

        self._write(txn)

    # ---- scheduler side

    def finish_pausing(self, task_id: int) -> bool:
        """pausing → paused (no subtask of the task is active any more)."""
        return self._move(Verb.FINISH_PAUSING, task_id)

    def finish_resuming(self, task_id: int) -> bool:
        """resuming → running (every paused subtask is pending again)."""
        return self._move(Verb.FINISH_RESUMING, task_id)

    def finish_modifying(self, task: Task) -> bool:
        """Apply a modification: back to the previous state with the new concurrency/limits/meta.

        Returns False when another scheduler did it already.
        """
        if task.modify_param is None:
            raise TaskStateNotAllowedError(f"task {task.id} has no pending modification")
        prev = task.modify_param.prev_state
        meta = check_meta(task.meta)

        def txn(conn: Connection) -> bool:
            values = {
                "concurrency": task.concurrency,
                "max_node_count": task.max_node_count,
                "meta": meta,
                "modify_params": None,
            }
            if not move_task(conn, Verb.FINISH_MODIFYING, task.id, to_state=prev, values=values):
                return False
            conn.execute(
                update(subtask_table)
                .where(subtask_table.c.task_id == task.id, subtask_table.c.state.in_(_LIVE_SUBTASK_STATES))
                .values(concurrency=task.concurrency, state_update_time=server_now())
            )
            return True

        return self._write(txn)

    def succeed(self, task_id: int) -> bool:
        """running → succeed at ``STEP_DONE``."""
        return self._move(Verb.SUCCEED, task_id, values={"step": STEP_DONE})

    def start_reverting(self, task_id: int, current_state: TaskState, err: BaseException | None) -> bool:
        """``current_state`` (pending/running/cancelling) → reverting, storing ``err``."""
        return self._move(Verb.START_REVERTING, task_id, expected=current_state, values={"error": serialize_error(err)})

    def finish_reverting(self, task_id: int) -> bool:
        """reverting → reverted (no subtask is active any more)."""
        return self._move(Verb.FINISH_REVERTING, task_id)

    def await_resolution(self, task_id: int, current_state: TaskState, err: BaseException | None) -> bool:
        """``current_state`` (running) → awaiting-resolution, storing ``err``; :meth:`resolve` undoes it."""
        return self._move(
            Verb.AWAIT_RESOLUTION, task_id, expected=current_state, values={"error": serialize_error(err)}
        )

    def fail(self, task_id: int, current_state: TaskState, err: BaseException | None) -> bool:
        """``current_state`` → failed: the framework could never run the task."""
        return self._move(Verb.FAIL, task_id, expected=current_state, values={"error": serialize_error(err)})
