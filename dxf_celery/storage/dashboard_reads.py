"""Read-only aggregates for the dashboard and the Prometheus collector.

TaskManager's read API answers one task at a time; a page of fifty tasks or a metrics
scrape needs the same figures for every task in one statement each, so a busy cluster is
not scanned once per row. Every function takes a :class:`TaskManager` and reads through
its read engine; none writes. Live and history rows are read by ONE ``UNION ALL`` so a
transfer to history committing in between cannot count a subtask twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, Table, func, literal, select, union_all

from dxf_celery.storage.engine import run_transaction
from dxf_celery.storage.tables import (
    lease_table,
    subtask_history_table,
    subtask_table,
    task_history_table,
    task_table,
)
from dxf_celery.storage.task_manager import TaskManager

#: Subtask states in which an executor works on its node.
_ACTIVE = ("pending", "running")


@dataclass
class StepStats:
    """One step of one task: subtask counts by state, summed summaries, first start, last end."""

    counts: dict[str, int] = field(default_factory=dict)
    by_node: dict[str, dict[str, int]] = field(default_factory=dict)
    row_count: int = 0
    bytes: int = 0
    first_start: datetime | None = None
    last_end: datetime | None = None
    first_create: datetime | None = None


@dataclass(frozen=True)
class SubtaskTotals:
    """Cluster-wide subtask figures (live and history) for the metrics endpoint."""

    by_state: dict[tuple[str, str], int]
    rows_by_type: dict[str, int]
    bytes_by_type: dict[str, int]


def _read(tm: TaskManager, fn: Any) -> Any:
    return run_transaction(tm.read_engine, tm.url, fn)


def _both(part: Any) -> Any:
    return union_all(part(subtask_table), part(subtask_history_table))


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def _summary(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 0
    try:
        data = json.loads(text)
    except ValueError:
        return 0, 0
    if not isinstance(data, dict):
        return 0, 0
    return _int(data.get("row_count")), _int(data.get("bytes"))


def step_stats(tm: TaskManager, task_ids: Sequence[int]) -> dict[int, dict[int, StepStats]]:
    """Per task and step: counts by state (overall and per node), summed rows/bytes, times.

    Counts and times are grouped in SQL (one row per task, step, state and node); only the
    summaries that say something are read row by row, since their JSON is decoded here.
    """
    ids = sorted(set(task_ids))
    if not ids:
        return {}

    def part(t: Table) -> Select[Any]:
        return select(
            t.c.task_id,
            t.c.step,
            t.c.state,
            t.c.exec_id,
            t.c.create_time,
            t.c.start_time,
            t.c.end_time,
        ).where(t.c.task_id.in_(ids))

    rows = _both(part).subquery()
    groups = select(
        rows.c.task_id,
        rows.c.step,
        rows.c.state,
        rows.c.exec_id,
        func.count(),
        func.min(rows.c.create_time),
        func.min(rows.c.start_time),
        func.max(rows.c.end_time),
    ).group_by(rows.c.task_id, rows.c.step, rows.c.state, rows.c.exec_id)
    summaries = _both(
        lambda t: select(t.c.task_id, t.c.step, t.c.summary).where(t.c.task_id.in_(ids), t.c.summary.not_in(("", "{}")))
    )

    def txn(conn: Connection) -> dict[int, dict[int, StepStats]]:
        out: dict[int, dict[int, StepStats]] = {}
        for task_id, step, state, exec_id, n, created, started, ended in conn.execute(groups):
            st = out.setdefault(int(task_id), {}).setdefault(int(step), StepStats())
            st.counts[state] = st.counts.get(state, 0) + int(n)
            node = st.by_node.setdefault(exec_id, {})
            node[state] = node.get(state, 0) + int(n)
            if created is not None and (st.first_create is None or created < st.first_create):
                st.first_create = created
            if started is not None and (st.first_start is None or started < st.first_start):
                st.first_start = started
            if ended is not None and (st.last_end is None or ended > st.last_end):
                st.last_end = ended
        for task_id, step, summary in conn.execute(summaries):
            st = out.setdefault(int(task_id), {}).setdefault(int(step), StepStats())
            r, b = _summary(summary)
            st.row_count += r
            st.bytes += b
        return out

    result: dict[int, dict[int, StepStats]] = _read(tm, txn)
    return result


def task_counts(tm: TaskManager) -> dict[tuple[str, str], int]:
    """Tasks by ``(state, type)``, live and history."""

    def part(t: Table) -> Select[Any]:
        return select(t.c.state, t.c.type)

    rows = union_all(part(task_table), part(task_history_table)).subquery()
    stmt = select(rows.c.state, rows.c.type, func.count()).group_by(rows.c.state, rows.c.type)
    result: dict[tuple[str, str], int] = _read(tm, lambda conn: {(r[0], r[1]): int(r[2]) for r in conn.execute(stmt)})
    return result


def subtask_totals(tm: TaskManager) -> SubtaskTotals:
    """Subtasks by ``(state, type)`` and summed summary rows/bytes by type, live and history."""
    counts_rows = _both(lambda t: select(t.c.state, t.c.type)).subquery()
    counts = select(counts_rows.c.state, counts_rows.c.type, func.count()).group_by(
        counts_rows.c.state, counts_rows.c.type
    )
    summaries = _both(lambda t: select(t.c.type, t.c.summary).where(t.c.summary != "").where(t.c.summary != "{}"))

    def txn(conn: Connection) -> SubtaskTotals:
        by_state = {(r[0], r[1]): int(r[2]) for r in conn.execute(counts)}
        rows: dict[str, int] = {}
        size: dict[str, int] = {}
        for task_type, summary in conn.execute(summaries):
            r, b = _summary(summary)
            rows[task_type] = rows.get(task_type, 0) + r
            size[task_type] = size.get(task_type, 0) + b
        return SubtaskTotals(by_state, rows, size)

    result: SubtaskTotals = _read(tm, txn)
    return result


def executors_by_node(tm: TaskManager) -> dict[str, int]:
    """Per node: how many tasks have pending or running subtasks there (one executor each)."""
    inner = (
        select(subtask_table.c.exec_id, subtask_table.c.task_id)
        .where(subtask_table.c.state.in_(_ACTIVE))
        .distinct()
        .subquery()
    )
    stmt = select(inner.c.exec_id, func.count()).group_by(inner.c.exec_id)
    result: dict[str, int] = _read(tm, lambda conn: {r[0]: int(r[1]) for r in conn.execute(stmt)})
    return result


def lease_holders(tm: TaskManager) -> dict[str, tuple[str, datetime]]:
    """Every lease row: name → (owner, expiry); expired rows included (the caller compares)."""
    stmt = select(lease_table.c.name, lease_table.c.owner, lease_table.c.expires_at)
    result: dict[str, tuple[str, datetime]] = _read(tm, lambda conn: {r[0]: (r[1], r[2]) for r in conn.execute(stmt)})
    return result


def task_source(tm: TaskManager, task_id: int) -> str:
    """``live`` or ``history``: where the task row is (the page says whether it was archived)."""

    def part(t: Table, name: str) -> Select[Any]:
        return select(literal(name)).where(t.c.id == task_id)

    stmt = union_all(part(task_table, "live"), part(task_history_table, "history"))
    result: str = _read(tm, lambda conn: conn.execute(stmt).scalar() or "")
    return result


__all__ = [
    "StepStats",
    "SubtaskTotals",
    "executors_by_node",
    "lease_holders",
    "step_stats",
    "subtask_totals",
    "task_counts",
    "task_source",
]
