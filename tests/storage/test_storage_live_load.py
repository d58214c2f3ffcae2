"""The scheduler's load aggregate on every database: per (task, node) counts of the live subtasks
that match a scan of the rows, ignore finished ones, and are read through ix_dxf_subtask_load
(only pending and running index entries); plus the balancer's per-node row reads."""

from __future__ import annotations

from typing import Any

from helpers.storage import force_subtask, running_task
from sqlalchemy import event, insert, text

from dxf_celery.proto import NodeLoad, SubtaskState, used_slots
from dxf_celery.storage import TaskManager
from dxf_celery.storage.base import utcnow
from dxf_celery.storage.tables import subtask_table


def _scan(tm: TaskManager) -> dict[int, dict[str, NodeLoad]]:
    """The same figures computed from every row, in Python."""
    cells: dict[tuple[int, str], dict[str, int]] = {}
    for task in tm.get_all_tasks():
        for s in tm.get_subtasks(task.id, with_history=False):
            if s.state not in (SubtaskState.PENDING, SubtaskState.RUNNING):
                continue
            cell = cells.setdefault((s.task_id, s.exec_id), {"concurrency": 0})
            cell["concurrency"] = max(cell["concurrency"], s.concurrency)
            cell[s.state.value] = cell.get(s.state.value, 0) + 1
            first = "first_" + s.state.value
            cell[first] = min(cell.get(first, s.id), s.id)
    out: dict[int, dict[str, NodeLoad]] = {}
    for (task_id, exec_id), cell in cells.items():
        out.setdefault(task_id, {})[exec_id] = NodeLoad(**cell)
    return out


def test_live_load_matches_a_row_scan_and_ignores_finished_rows(task_manager: TaskManager) -> None:
    tm = task_manager
    a = running_task(tm, "a", exec_ids=["n1", "n2"], n=7, concurrency=2)
    b = running_task(tm, "b", exec_ids=["n1", "n3"], n=4, concurrency=3)
    done = running_task(tm, "done", exec_ids=["n4"], n=3, concurrency=5)
    subs = tm.get_subtasks(a.id)
    tm.start_subtask(subs[2].id, "n1")
    tm.start_subtask(subs[3].id, "n2")
    force_subtask(tm, subs[0].id, state=SubtaskState.SUCCEED)
    force_subtask(tm, subs[1].id, state=SubtaskState.FAILED)
    force_subtask(tm, subs[5].id, state=SubtaskState.PAUSED)
    for s in tm.get_subtasks(done.id):
        force_subtask(tm, s.id, state=SubtaskState.SUCCEED)
    b_subs = tm.get_subtasks(b.id)
    force_subtask(tm, b_subs[0].id, concurrency=4)  # a live modification half applied: max wins

    load = tm.get_live_load()
    assert load == _scan(tm)
    assert done.id not in load  # only finished rows: no entry at all
    # n1 holds ordinals 1 (succeed), 3 (running), 5, 7; n2 holds 2 (failed), 4 (running), 6 (paused).
    assert load[a.id]["n1"] == NodeLoad(
        pending=2, running=1, concurrency=2, first_pending=subs[4].id, first_running=subs[2].id
    )
    assert load[a.id]["n2"] == NodeLoad(pending=0, running=1, concurrency=2, first_running=subs[3].id)
    assert load[b.id]["n1"].concurrency == 4 and load[b.id]["n1"].total == 2
    # Slots per node: the largest concurrency of each task there, summed over tasks.
    assert used_slots(load) == {"n1": 2 + 4, "n2": 2, "n3": 3}
    assert tm.get_used_slots_on_nodes() == used_slots(load)


def test_live_load_is_empty_without_live_subtasks(task_manager: TaskManager) -> None:
    tm = task_manager
    assert tm.get_live_load() == {}
    task = running_task(tm, n=2)
    for s in tm.get_subtasks(task.id):
        force_subtask(tm, s.id, state=SubtaskState.CANCELED)
    assert tm.get_live_load() == {}
    assert tm.get_used_slots_on_nodes() == {}


def test_node_subtasks_all_or_the_newest_pending(task_manager: TaskManager) -> None:
    tm = task_manager
    task = running_task(tm, exec_ids=["n1", "n2"], n=8)
    other = running_task(tm, "other", exec_ids=["n1"], n=2)
    n1 = [s for s in tm.get_subtasks(task.id) if s.exec_id == "n1"]  # ordinals 1, 3, 5, 7
    tm.start_subtask(n1[0].id, "n1")
    force_subtask(tm, n1[1].id, state=SubtaskState.SUCCEED)
    every = tm.get_node_subtasks(task.id, "n1", pending_only=False)
    assert [(s.ordinal, s.state) for s in every] == [
        (1, SubtaskState.RUNNING),
        (5, SubtaskState.PENDING),
        (7, SubtaskState.PENDING),
    ]
    assert [s.ordinal for s in tm.get_node_subtasks(task.id, "n1", pending_only=True)] == [5, 7]
    assert [s.ordinal for s in tm.get_node_subtasks(task.id, "n1", pending_only=True, newest=1)] == [7]
    assert [s.ordinal for s in tm.get_node_subtasks(task.id, "n1", pending_only=True, newest=9)] == [5, 7]
    assert tm.get_node_subtasks(task.id, "n3", pending_only=False) == []
    assert {s.task_id for s in tm.get_node_subtasks(other.id, "n1", pending_only=False)} == {other.id}


def _explain(tm: TaskManager, db_kind: str, statement: str, parameters: Any) -> str:
    prefix = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN ", "mariadb": "EXPLAIN "}[db_kind]
    raw = tm.read_engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(prefix + statement, parameters)
        rows = cursor.fetchall()
        raw.rollback()
    finally:
        raw.close()
    return "\n".join(" ".join(str(c) for c in row) for row in rows)


def _finished_backlog(tm: TaskManager, task_id: int, n: int) -> None:
    """``n`` succeeded subtasks of a running task's earlier step, written as finished rows."""
    now = utcnow()
    row = {"task_id": task_id, "step": 0, "type": "t", "exec_id": "n1", "state": SubtaskState.SUCCEED.value}
    rest = {"concurrency": 1, "meta": b"m", "summary": "{}", "checkpoint": "{}", "create_time": now}
    with tm.write_engine.begin() as conn:
        conn.execute(insert(subtask_table), [{**row, **rest, "ordinal": i + 1} for i in range(n)])


def test_live_load_reads_only_live_index_entries(task_manager: TaskManager, db_kind: str) -> None:
    """EXPLAIN the statement as the driver receives it: the load index's live entries, no table scan."""
    tm = task_manager
    task = running_task(tm, exec_ids=["n1", "n2", "n3"], n=20)
    _finished_backlog(tm, task.id, 5000)
    if db_kind == "postgresql":  # as autovacuum leaves it: statistics and the visibility map
        with tm.write_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE dxf_subtask"))
    else:
        with tm.write_engine.begin() as conn:
            conn.execute(text("ANALYZE TABLE dxf_subtask" if db_kind == "mariadb" else "ANALYZE"))
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        captured.append((statement, parameters))

    event.listen(tm.read_engine, "before_cursor_execute", capture)
    try:
        load = tm.get_live_load()
    finally:
        event.remove(tm.read_engine, "before_cursor_execute", capture)
    assert sum(c.total for c in load[task.id].values()) == 20
    ((statement, parameters),) = [c for c in captured if "GROUP BY" in c[0]]
    plan = _explain(tm, db_kind, statement, parameters)
    if db_kind == "postgresql":
        # At 20 live rows the planner may take either partial index (load, or claim plus a sort of
        # the live rows): both hold pending/running rows only, so no finished row is read.
        assert "Scan using ix_dxf_subtask_load" in plan or "Scan using ix_dxf_subtask_claim" in plan, plan
        assert "Seq Scan" not in plan, plan
    else:
        assert "ix_dxf_subtask_load" in plan, plan
    if db_kind == "sqlite":
        assert "USING COVERING INDEX ix_dxf_subtask_load" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    elif db_kind == "mariadb":
        # A range on state over the composite index, read from the index alone (no filesort).
        assert " range " in f" {plan} " and "Using index" in plan, plan
        assert "filesort" not in plan and "temporary" not in plan, plan
