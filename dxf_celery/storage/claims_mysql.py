"""MariaDB/MySQL statements of the claim protocol: finish and claim-next as one autocommit statement.

There is no ``UPDATE ... RETURNING``, so the claimed id comes back in the OK packet through
``LAST_INSERT_ID(id)`` (0 when nothing was claimed) and one read of that row follows: two
round trips and one log flush per subtask, no ``BEGIN``/``COMMIT``.

The finish-and-claim statement updates two rows: ``id IN (previous, lowest pending)``, the
lowest pending id read by a scalar subquery over a derived table (MariaDB refuses a direct
subquery on the table being updated; the derived one is materialised, and the optimizer
then reads both ids as a primary-key range of two rows). Each row keeps its own guard:
the previous one is finished only while still running on this node, the next one is
started only while still pending here and the task is runnable at the step. The subquery
reads without a lock, so a claimer that loses the lowest id to another claimer gets no
row; the caller then runs the plain claim (``ORDER BY id LIMIT 1`` under InnoDB's row
locks), which is also the end-of-step answer.

SQLAlchemy has no ``UPDATE ... ORDER BY`` and no multi-row ``CASE`` update builder worth
the indirection, so the statements are spelt here, with bound parameters only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.sql import Select, TextClause

from dxf_celery.proto import SubtaskFinish, SubtaskState, TaskState
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.tables import subtask_table, task_table

#: Task states in which an executor may start subtasks (:mod:`.claims` uses the same tuple).
RUNNABLE_TASK_STATES = (TaskState.RUNNING.value, TaskState.MODIFYING.value)

_RUNNABLE_AT_STEP = (
    "EXISTS (SELECT 1 FROM dxf_task WHERE dxf_task.id = :task_id "
    "AND dxf_task.state IN (:runnable_1, :runnable_2) AND dxf_task.step = :step)"
)


def claim_text(conn: Connection) -> TextClause:
    """Start the lowest pending subtask of (task, node, step): its id in ``lastrowid``, 0 if none."""
    now = _now(conn)
    # FORCE INDEX: left alone, the optimizer intersects two (exec_id, state) and
    # (task_id, step, state) ranges and sorts every pending row per claim.
    return text(
        f"UPDATE dxf_subtask FORCE INDEX (ix_dxf_subtask_claim) "
        f"SET id = LAST_INSERT_ID(id), state = :running, start_time = {now}, state_update_time = {now} "
        f"WHERE task_id = :task_id AND exec_id = :exec_id AND step = :step AND state = :pending "
        f"AND {_RUNNABLE_AT_STEP} ORDER BY id LIMIT 1"
    )


def finish_and_claim_text(conn: Connection) -> TextClause:
    """Succeed ``:prev_id`` and start the lowest pending subtask, in one statement (see the module doc)."""
    now = _now(conn)
    prev = "id = :prev_id"
    # MySQL assigns left to right and later expressions see earlier results: every CASE
    # below tests ``id``, which the first assignment leaves as it is.
    return text(
        f"UPDATE dxf_subtask SET "
        f"id = CASE WHEN {prev} THEN id ELSE LAST_INSERT_ID(id) END, "
        f"meta = CASE WHEN {prev} THEN :meta ELSE meta END, "
        f"summary = CASE WHEN {prev} THEN COALESCE(:summary, summary) ELSE summary END, "
        f"end_time = CASE WHEN {prev} THEN {now} ELSE end_time END, "
        f"start_time = CASE WHEN {prev} THEN start_time ELSE {now} END, "
        f"state = CASE WHEN {prev} THEN :succeed ELSE :running END, "
        f"state_update_time = {now} "
        f"WHERE id IN (:prev_id, (SELECT pick.next_id FROM ("
        f"SELECT MIN(id) AS next_id FROM dxf_subtask FORCE INDEX (ix_dxf_subtask_claim) "
        f"WHERE task_id = :task_id AND exec_id = :exec_id AND step = :step AND state = :pending) AS pick)) "
        f"AND exec_id = :exec_id "
        f"AND (({prev} AND state = :running) "
        f"OR (id <> :prev_id AND task_id = :task_id AND step = :step AND state = :pending AND {_RUNNABLE_AT_STEP}))"
    )


def claim_params(task_id: int, exec_id: str, step: int) -> dict[str, Any]:
    return {
        "running": SubtaskState.RUNNING.value,
        "pending": SubtaskState.PENDING.value,
        "task_id": task_id,
        "exec_id": exec_id,
        "step": step,
        "runnable_1": RUNNABLE_TASK_STATES[0],
        "runnable_2": RUNNABLE_TASK_STATES[1],
    }


def finish_params(task_id: int, exec_id: str, step: int, finish: SubtaskFinish) -> dict[str, Any]:
    params = claim_params(task_id, exec_id, step)
    params.update(
        prev_id=finish.subtask_id,
        meta=finish.meta,
        summary=finish.summary,
        succeed=SubtaskState.SUCCEED.value,
    )
    return params


def _claimed_row() -> Select[Any]:
    s, t = subtask_table, task_table
    return (
        select(
            *s.c,
            t.c.state.label("task_state"),
            t.c.concurrency.label("task_concurrency"),
            t.c.state_update_time.label("task_stamp"),
        )
        .join_from(s, t, t.c.id == s.c.task_id)
        .where(s.c.id == bindparam("b_id"))
    )


#: The claimed subtask with its task's fingerprint, by id (``b_id``); built once, compiled once.
CLAIMED_ROW = _claimed_row()


def _now(conn: Connection) -> str:
    return str(server_now().compile(dialect=conn.dialect))


__all__ = [
    "CLAIMED_ROW",
    "RUNNABLE_TASK_STATES",
    "claim_params",
    "claim_text",
    "finish_and_claim_text",
    "finish_params",
]
