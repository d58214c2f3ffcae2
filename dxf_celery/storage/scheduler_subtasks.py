"""Subtasks, scheduler side: counts, errors and summaries a scheduler reads, and the moves
it makes on subtasks (resume, rebalance); plus the batched reads of one scheduler pass (the
bases and step counts of every scheduled task in two statements, not two per task)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, Table, func, select, text, tuple_, update

from dxf_celery.errors import SubtaskNotFoundError
from dxf_celery.proto import LiveLoad, NodeLoad, StoredError, Subtask, SubtaskBase, SubtaskState, TaskBase, used_slots
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.rows import (
    ACTIVE,
    SUBTASK_BASE_COLUMNS,
    TASK_BASE_COLUMNS,
    live_and_history,
    load_json,
    subtask_base_from_row,
    subtask_from_row,
    task_base_from_row,
    values_of,
)
from dxf_celery.storage.tables import ACTIVE_PREDICATE, subtask_table, task_table

_FAILED_OR_CANCELED = values_of((SubtaskState.FAILED, SubtaskState.CANCELED))
#: Ids per ``IN`` list of the batched reads (well under every driver's parameter limit).
_CHUNK = 500


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


class SchedulerSubtasks(StorageBase):
    """What schedulers, the balancer and the client API read about subtasks."""

    def get_subtask(self, subtask_id: int) -> Subtask:
        stmt = select(subtask_table).where(subtask_table.c.id == subtask_id)

        def txn(conn: Connection) -> Subtask:
            row = conn.execute(stmt).first()
            if row is None:
                raise SubtaskNotFoundError(f"subtask {subtask_id} not found")
            return subtask_from_row(row)

        return self._read(txn)

    def get_used_slots_on_nodes(self) -> dict[str, int]:
        """Per node: the sum over tasks of the largest concurrency of its active subtasks."""
        return used_slots(self.get_live_load())

    def get_live_load(self) -> LiveLoad:
        """Every task's pending and running subtasks per node, in one aggregate over live rows.

        Grouped in the order of ``ix_dxf_subtask_load`` (state, task_id, exec_id), which also
        holds concurrency and id: the plan reads only that index's live entries, never a
        finished row (partial on PostgreSQL and SQLite, a range on state on MariaDB).
        """
        s = subtask_table.c
        stmt = (
            select(s.state, s.task_id, s.exec_id, func.count(), func.max(s.concurrency), func.min(s.id))
            .where(text(ACTIVE_PREDICATE))
            .group_by(s.state, s.task_id, s.exec_id)
        )

        def txn(conn: Connection) -> LiveLoad:
            cells: dict[tuple[int, str], dict[str, int]] = {}
            for state, task_id, exec_id, n, conc, first in conn.execute(stmt):
                cell = cells.setdefault((int(task_id), exec_id), {"concurrency": 0})
                cell["concurrency"] = max(cell["concurrency"], int(conc or 0))
                cell[state] = int(n)
                cell["first_" + state] = int(first)
            out: LiveLoad = {}
            for (task_id, exec_id), cell in cells.items():
                out.setdefault(task_id, {})[exec_id] = NodeLoad(**cell)
            return out

        return self._read(txn)

    def get_task_bases_by_ids(self, task_ids: Sequence[int]) -> dict[int, TaskBase]:
        """The light columns of the live tasks among ``task_ids`` (a missing id: moved to history)."""
        cols = [task_table.c[c] for c in TASK_BASE_COLUMNS]

        def txn(conn: Connection) -> dict[int, TaskBase]:
            out: dict[int, TaskBase] = {}
            for chunk in _chunks(list(task_ids)):
                for row in conn.execute(select(*cols).where(task_table.c.id.in_(chunk))):
                    base = task_base_from_row(row)
                    out[base.id] = base
            return out

        return self._read(txn) if task_ids else {}

    def get_step_counts(self, steps: dict[int, int]) -> dict[int, dict[SubtaskState, int]]:
        """Per task: its subtasks of the step ``steps[task_id]`` counted by state, in one aggregate.

        A task without a subtask in that step maps to an empty dict.
        """

        def txn(conn: Connection) -> dict[int, dict[SubtaskState, int]]:
            out: dict[int, dict[SubtaskState, int]] = {task_id: {} for task_id in steps}
            for chunk in _chunks(list(steps.items())):
                stmt = (
                    select(subtask_table.c.task_id, subtask_table.c.state, func.count())
                    .where(tuple_(subtask_table.c.task_id, subtask_table.c.step).in_(chunk))
                    .group_by(subtask_table.c.task_id, subtask_table.c.state)
                )
                for task_id, state, n in conn.execute(stmt):
                    out[int(task_id)][SubtaskState(state)] = int(n)
            return out

        return self._read(txn) if steps else {}

    def get_active_subtasks(self, task_id: int) -> list[SubtaskBase]:
        """pending/running subtasks of a task, every step, by id."""
        cols = [subtask_table.c[c] for c in SUBTASK_BASE_COLUMNS]
        stmt = (
            select(*cols)
            .where(subtask_table.c.task_id == task_id, subtask_table.c.state.in_(ACTIVE))
            .order_by(subtask_table.c.id)
        )
        return self._read(lambda conn: [subtask_base_from_row(r) for r in conn.execute(stmt)])

    def get_node_subtasks(
        self, task_id: int, exec_id: str, *, pending_only: bool, newest: int | None = None
    ) -> list[SubtaskBase]:
        """A task's live subtasks on one node (every step), by id; what the balancer moves.

        ``pending_only`` leaves running ones out; ``newest`` keeps only that many highest ids
        (the pending subtasks a node over its quota gives away first).
        """
        s = subtask_table.c
        states = [SubtaskState.PENDING.value] if pending_only else list(ACTIVE)
        stmt = select(*[s[c] for c in SUBTASK_BASE_COLUMNS]).where(
            s.task_id == task_id, s.exec_id == exec_id, s.state.in_(states)
        )
        stmt = stmt.order_by(s.id) if newest is None else stmt.order_by(s.id.desc()).limit(newest)

        def txn(conn: Connection) -> list[SubtaskBase]:
            rows = [subtask_base_from_row(r) for r in conn.execute(stmt)]
            return rows if newest is None else rows[::-1]

        return self._read(txn)

    def get_subtask_cnt_group_by_states(self, task_id: int, step: int) -> dict[SubtaskState, int]:
        stmt = (
            select(subtask_table.c.state, func.count())
            .where(subtask_table.c.task_id == task_id, subtask_table.c.step == step)
            .group_by(subtask_table.c.state)
        )
        return self._read(lambda conn: {SubtaskState(r[0]): int(r[1]) for r in conn.execute(stmt)})

    def get_subtask_counts_by_step(self, task_id: int) -> dict[int, dict[SubtaskState, int]]:
        """Counts per step and state over live and history rows (for progress reports)."""

        rows = live_and_history(lambda t: select(t.c.step, t.c.state).where(t.c.task_id == task_id)).subquery()
        stmt = select(rows.c.step, rows.c.state, func.count()).group_by(rows.c.step, rows.c.state)

        def txn(conn: Connection) -> dict[int, dict[SubtaskState, int]]:
            out: dict[int, dict[SubtaskState, int]] = {}
            for step, state, n in conn.execute(stmt):
                out.setdefault(step, {})[SubtaskState(state)] = int(n)
            return out

        return self._read(txn)

    def resume_subtasks(self, task_id: int) -> int:
        """paused → pending on every node, clearing errors."""
        stmt = (
            update(subtask_table)
            .where(subtask_table.c.task_id == task_id, subtask_table.c.state == SubtaskState.PAUSED.value)
            .values(state=SubtaskState.PENDING.value, error=None, state_update_time=server_now())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def get_subtask_errors(self, task_id: int) -> list[StoredError | None]:
        """Errors of failed/canceled subtasks of every step (None for a subtask without one)."""
        stmt = (
            select(subtask_table.c.error)
            .where(subtask_table.c.task_id == task_id, subtask_table.c.state.in_(_FAILED_OR_CANCELED))
            .order_by(subtask_table.c.id)
        )
        return self._read(lambda conn: [StoredError.from_json(r[0]) for r in conn.execute(stmt)])

    def update_subtasks_exec_ids(self, subtasks: Sequence[SubtaskBase]) -> int:
        """Move subtasks to their new ``exec_id``, each guarded by the state the caller read."""
        if not subtasks:
            return 0

        def txn(conn: Connection) -> int:
            moved = 0
            for s in subtasks:
                moved += conn.execute(
                    update(subtask_table)
                    .where(subtask_table.c.id == s.id, subtask_table.c.state == s.state.value)
                    .values(exec_id=s.exec_id)
                ).rowcount
            return moved

        return self._write(txn)

    def get_all_subtasks_by_step_and_state(self, task_id: int, step: int, state: SubtaskState) -> list[Subtask]:
        stmt = (
            select(subtask_table)
            .where(
                subtask_table.c.task_id == task_id,
                subtask_table.c.step == step,
                subtask_table.c.state == state.value,
            )
            .order_by(subtask_table.c.ordinal)
        )
        return self._read(lambda conn: [subtask_from_row(r) for r in conn.execute(stmt)])

    def get_subtasks(self, task_id: int, step: int | None = None, *, with_history: bool = True) -> list[Subtask]:
        """Subtasks of a task (live, then history), ordered by step and ordinal."""

        def part(table: Table) -> Select[Any]:
            stmt = select(*table.c).where(table.c.task_id == task_id)
            return stmt.where(table.c.step == step) if step is not None else stmt

        stmt = live_and_history(part) if with_history else part(subtask_table)

        def txn(conn: Connection) -> list[Subtask]:
            out = [subtask_from_row(r) for r in conn.execute(stmt)]
            out.sort(key=lambda s: (s.step if s.step >= 0 else 1 << 30, s.ordinal, s.id))
            return out

        return self._read(txn)

    def get_subtask_summaries(self, task_id: int, step: int) -> list[dict[str, Any]]:
        """Decoded summaries of every subtask of a step, live and history."""

        stmt = live_and_history(lambda t: select(t.c.summary).where(t.c.task_id == task_id, t.c.step == step))
        return self._read(lambda conn: [load_json(r[0]) for r in conn.execute(stmt)])

    def get_busy_nodes(self) -> list[str]:
        stmt = select(subtask_table.c.exec_id).where(subtask_table.c.state.in_(ACTIVE)).distinct()
        return self._read(lambda conn: sorted(r[0] for r in conn.execute(stmt)))
