"""What the balancer reads, on real databases: rows only to move them. A steady pass reads one
aggregate and no subtask row; a node that joins or is lost makes it read (and move) rows.

Statements are counted with a SQLAlchemy event listener on the TaskManager's engines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from helpers.cluster_types import TASK_TYPE, demo_meta
from helpers.scheduling import INTERVALS, manager, nodes, pass_until, passes
from sqlalchemy import event

from dxf_celery import handle
from dxf_celery.storage import TaskManager

pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py

BALANCE_EVERY_PASS = replace(INTERVALS, balance=0.0)


@contextmanager
def statements(tm: TaskManager) -> Iterator[list[str]]:
    """Every statement the TaskManager sends while the block runs, as one line each."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(" ".join(statement.split()))

    engines = {tm.read_engine, tm.write_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def row_reads(seen: list[str]) -> list[str]:
    """Reads of subtask rows (the light columns), as opposed to aggregates over them."""
    return [s for s in seen if s.startswith("SELECT") and "dxf_subtask.ordinal" in s and "FROM dxf_subtask" in s]


def load_reads(seen: list[str]) -> list[str]:
    return [s for s in seen if "FROM dxf_subtask" in s and "GROUP BY dxf_subtask.state, dxf_subtask.task_id" in s]


def test_a_steady_pass_reads_no_subtask_row(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2", "n3")
    m = manager(tm, intervals=BALANCE_EVERY_PASS)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=30))
    passes(m, 3)
    assert len(tm.get_active_subtasks(task.id)) == 30
    with statements(tm) as seen:
        passes(m, 3)
    assert row_reads(seen) == []
    # One load aggregate per pass serves the balancer and, a pass later, the slot accounting.
    assert len(load_reads(seen)) == 3
    # A subtask that starts changes the load, not the balance: still no row read.
    first = tm.get_subtasks(task.id, 1)[0]
    tm.start_subtask(first.id, first.exec_id)
    with statements(tm) as seen:
        passes(m, 2)
    assert row_reads(seen) == []


def test_a_node_that_joins_gets_pending_rows_read_and_moved(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2")
    m = manager(tm, intervals=BALANCE_EVERY_PASS)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6))
    passes(m, 2)
    nodes(tm, "n3")
    with statements(tm) as seen:
        passes(m)
    # Only the newest pending rows of the nodes over their quota, one read per giving node.
    reads = row_reads(seen)
    assert len(reads) == 2 and all("LIMIT" in r for r in reads), reads
    assert sorted(s.exec_id for s in tm.get_active_subtasks(task.id)) == ["n1", "n1", "n2", "n2", "n3", "n3"]
    with statements(tm) as seen:
        passes(m, 2)
    assert row_reads(seen) == []


def test_a_lost_node_has_its_rows_read_and_moved(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2", "n3")
    m = manager(tm, intervals=BALANCE_EVERY_PASS)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6))
    passes(m, 2)
    on_n3 = [s for s in tm.get_subtasks(task.id, 1) if s.exec_id == "n3"]
    tm.start_subtask(on_n3[0].id, "n3")
    tm.delete_dead_nodes(["n3"])  # what the node manager does to a node lost for good
    with statements(tm) as seen:
        passes(m)
    reads = row_reads(seen)
    assert len(reads) == 1 and "LIMIT" not in reads[0], reads  # every row of n3, running too
    active = tm.get_active_subtasks(task.id)
    assert sorted(s.exec_id for s in active) == ["n1", "n1", "n1", "n2", "n2", "n2"]
    with statements(tm) as seen:
        passes(m, 2)
    assert row_reads(seen) == []


def test_several_step_switches_of_a_pass_share_one_transaction(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2")
    m = manager(tm, intervals=BALANCE_EVERY_PASS)
    tasks = [handle.submit_task(tm, f"k{i}", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2)) for i in range(3)]
    transactions: list[list[str]] = []

    def begin(conn: Any) -> None:
        transactions.append([])

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if transactions:
            transactions[-1].append(" ".join(statement.split()[:3]))

    event.listen(tm.write_engine, "begin", begin)
    event.listen(tm.write_engine, "before_cursor_execute", record)
    try:
        passes(m)
    finally:
        event.remove(tm.write_engine, "begin", begin)
        event.remove(tm.write_engine, "before_cursor_execute", record)
    inserting = [t for t in transactions if "INSERT INTO dxf_subtask" in t]
    assert len(inserting) == 1, transactions  # three tasks' switches, one transaction
    for task in tasks:
        assert (handle.get_task(tm, task.id).state, len(tm.get_subtasks(task.id, 1))) == ("running", 2)


def test_a_running_subtask_never_leaves_a_live_node_that_is_full_for_its_task(task_manager: TaskManager) -> None:
    """Scenario c's re-runs and its NonIdempotentSubtaskError: a higher-ranked task takes the
    slots of n1 in the round, so n1 is full for the lower-ranked task whose subtask runs there.
    Its pending subtasks may leave n1; the running one stays (moved, it would run twice or, not
    idempotent, fail its task), and n1's slots count as used by it."""
    tm = task_manager
    nodes(tm, "n1", "n2", cpu=2)
    m = manager(tm, intervals=BALANCE_EVERY_PASS)
    low = handle.submit_task(tm, "low", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2))
    passes(m, 2)
    rows = tm.get_subtasks(low.id, 1)
    assert len(rows) == 2
    on_n1 = [replace(s, exec_id="n1") for s in rows if s.exec_id != "n1"]
    tm.update_subtasks_exec_ids(on_n1)  # both of low's subtasks on n1, the first running
    first = min(rows, key=lambda s: s.id)
    tm.start_subtask(first.id, "n1")
    high = handle.submit_task(
        tm, "high", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2), priority=1, concurrency=2, max_node_count=1
    )
    pass_until(m, lambda: len(tm.get_active_subtasks(high.id)) == 2, "high's subtasks are planned")
    high_on = {s.exec_id for s in tm.get_active_subtasks(high.id)}
    passes(m, 3)
    placed = {s.id: (s.exec_id, s.state.value) for s in tm.get_active_subtasks(low.id)}
    assert placed[first.id] == ("n1", "running"), (high_on, placed)
