"""Subtasks, executor side: what a node reads and writes about the subtasks it runs.

Every write is keyed by ``(subtask id, exec_id)``, so a node that lost a subtask to the
balancer (its ``exec_id`` changed) cannot touch it any more.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select, update

from dxf_celery.errors import SubtaskNotFoundError
from dxf_celery.proto import Subtask, SubtaskBase, SubtaskState, serialize_error
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.claims import SubtaskClaims
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.rows import ACTIVE, check_meta, dump_checkpoint, load_checkpoint, subtask_from_row, values_of
from dxf_celery.storage.tables import subtask_table

_END_STATES = (SubtaskState.SUCCEED, SubtaskState.FAILED, SubtaskState.CANCELED)


class ExecutorSubtasks(StorageBase):
    """DXF's ``TaskTable`` subtask calls (see ``taskexecutor.interfaces.TaskTable``)."""

    def subtask_claims(self, exec_id: str, task_id: int) -> SubtaskClaims:
        """The claim/finish protocol of one executor, on a connection it holds (close it when done)."""
        return SubtaskClaims(self, exec_id, task_id)

    def get_subtasks_by_exec_id_and_step_and_states(
        self, exec_id: str, task_id: int, step: int, *states: SubtaskState | str
    ) -> list[Subtask]:
        stmt = (
            select(subtask_table)
            .where(
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.task_id == task_id,
                subtask_table.c.step == step,
                subtask_table.c.state.in_(values_of(states)),
            )
            .order_by(subtask_table.c.id)
        )
        return self._read(lambda conn: [subtask_from_row(r) for r in conn.execute(stmt)])

    def get_first_subtask_in_states(
        self, exec_id: str, task_id: int, step: int, *states: SubtaskState | str
    ) -> Subtask | None:
        """The lowest-id subtask of this node, task and step in ``states``, or None.

        DXF leaves the order unspecified; ordering by id makes runs reproducible.
        """
        stmt = (
            select(subtask_table)
            .where(
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.task_id == task_id,
                subtask_table.c.step == step,
                subtask_table.c.state.in_(values_of(states)),
            )
            .order_by(subtask_table.c.id)
            .limit(1)
        )

        def txn(conn: Connection) -> Subtask | None:
            row = conn.execute(stmt).first()
            return subtask_from_row(row) if row is not None else None

        return self._read(txn)

    def start_subtask(self, subtask_id: int, exec_id: str) -> None:
        """pending → running for the owning node; :class:`SubtaskNotFoundError` otherwise.

        Unlike DXF this also requires ``pending``, so two racers can never both start it.
        """
        now = server_now()
        stmt = (
            update(subtask_table)
            .where(
                subtask_table.c.id == subtask_id,
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.state == SubtaskState.PENDING.value,
            )
            .values(state=SubtaskState.RUNNING.value, start_time=now, state_update_time=now)
        )
        if self._write(lambda conn: conn.execute(stmt).rowcount) == 0:
            raise SubtaskNotFoundError(f"subtask {subtask_id} is not pending on {exec_id}")

    def update_subtask_state_and_error(
        self, exec_id: str, subtask_id: int, state: SubtaskState, err: BaseException | None
    ) -> None:
        now = server_now()
        values: dict[str, Any] = {"state": state.value, "error": serialize_error(err), "state_update_time": now}
        if state in _END_STATES:
            values["end_time"] = now
        stmt = (
            update(subtask_table)
            .where(subtask_table.c.id == subtask_id, subtask_table.c.exec_id == exec_id)
            .values(**values)
        )
        self._write(lambda conn: conn.execute(stmt))

    def _finish_one_active(self, exec_id: str, task_id: int, state: SubtaskState, err: BaseException | None) -> bool:
        def txn(conn: Connection) -> bool:
            row = conn.execute(
                select(subtask_table.c.id)
                .where(
                    subtask_table.c.exec_id == exec_id,
                    subtask_table.c.task_id == task_id,
                    subtask_table.c.state.in_(ACTIVE),
                )
                .order_by(subtask_table.c.id)
                .limit(1)
            ).first()
            if row is None:
                return False
            now = server_now()
            result = conn.execute(
                update(subtask_table)
                .where(
                    subtask_table.c.id == row.id,
                    subtask_table.c.exec_id == exec_id,
                    subtask_table.c.state.in_(ACTIVE),
                )
                .values(
                    state=state.value,
                    error=serialize_error(err),
                    start_time=func.coalesce(subtask_table.c.start_time, now),
                    state_update_time=now,
                    end_time=now,
                )
            )
            return result.rowcount > 0

        return self._write(txn)

    def fail_subtask(self, exec_id: str, task_id: int, err: BaseException | None) -> bool:
        """Fail one pending/running subtask of this node so the scheduler reverts the task."""
        if err is None:
            return False
        return self._finish_one_active(exec_id, task_id, SubtaskState.FAILED, err)

    def cancel_subtask(self, exec_id: str, task_id: int) -> bool:
        """Cancel one pending/running subtask of this node (called each tick while reverting)."""
        return self._finish_one_active(exec_id, task_id, SubtaskState.CANCELED, None)

    def finish_subtask(self, exec_id: str, subtask_id: int, meta: bytes) -> None:
        """Mark succeed and store the (possibly rewritten) meta; keyed by id and exec_id."""
        meta = check_meta(meta, "subtask meta")
        now = server_now()
        stmt = (
            update(subtask_table)
            .where(subtask_table.c.id == subtask_id, subtask_table.c.exec_id == exec_id)
            .values(meta=meta, state=SubtaskState.SUCCEED.value, state_update_time=now, end_time=now)
        )
        self._write(lambda conn: conn.execute(stmt))

    def subtask_back_to_pending(self, exec_id: str, subtask_id: int) -> bool:
        """running → pending for a subtask whose step code said it did nothing (``SubtaskNotStartedError``).

        A compare-and-set on ``(id, exec_id, running)``: a row the balancer moved, the
        scheduler settled or another node claimed is left alone (False).
        """
        stmt = (
            update(subtask_table)
            .where(
                subtask_table.c.id == subtask_id,
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.state == SubtaskState.RUNNING.value,
            )
            .values(state=SubtaskState.PENDING.value, start_time=None, state_update_time=server_now())
        )
        return bool(self._write(lambda conn: conn.execute(stmt).rowcount) > 0)

    def pause_subtasks(self, exec_id: str, task_id: int) -> int:
        stmt = (
            update(subtask_table)
            .where(
                subtask_table.c.task_id == task_id,
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.state.in_(ACTIVE),
            )
            .values(state=SubtaskState.PAUSED.value, state_update_time=server_now())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def running_subtasks_back_to_pending(self, subtasks: Sequence[SubtaskBase]) -> None:
        """Give idempotent leftovers back to the balancer: running → pending, per (id, exec_id)."""
        if not subtasks:
            return

        def txn(conn: Connection) -> None:
            now = server_now()
            for s in subtasks:
                conn.execute(
                    update(subtask_table)
                    .where(
                        subtask_table.c.id == s.id,
                        subtask_table.c.exec_id == s.exec_id,
                        subtask_table.c.state == SubtaskState.RUNNING.value,
                    )
                    .values(state=SubtaskState.PENDING.value, state_update_time=now)
                )

        self._write(txn)

    def update_subtask_summary(self, subtask_id: int, summary: str | dict[str, Any]) -> None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        stmt = update(subtask_table).where(subtask_table.c.id == subtask_id).values(summary=text)
        self._write(lambda conn: conn.execute(stmt))

    def save_subtask_checkpoint(self, exec_id: str, subtask_id: int, checkpoint: Any) -> bool:
        """Store a JSON-serialisable checkpoint of a subtask this node is running.

        Keyed by ``(subtask id, exec_id)`` and guarded by ``running``: False (nothing written)
        when the subtask moved to another node or is no longer running. ``TypeError`` for a
        value JSON cannot encode.
        """
        text = dump_checkpoint(checkpoint)
        stmt = (
            update(subtask_table)
            .where(
                subtask_table.c.id == subtask_id,
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.state == SubtaskState.RUNNING.value,
            )
            .values(checkpoint=text)
        )
        return bool(self._write(lambda conn: conn.execute(stmt).rowcount) > 0)

    def get_subtask_checkpoint(self, subtask_id: int) -> Any:
        """The last checkpoint saved for a live subtask, or None when none was saved."""
        stmt = select(subtask_table.c.checkpoint).where(subtask_table.c.id == subtask_id)
        return self._read(lambda conn: load_checkpoint(conn.execute(stmt).scalar()))
