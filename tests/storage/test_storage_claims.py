"""The executor's claim protocol (storage.claims) on SQLite, PostgreSQL and MariaDB.

A claim starts the lowest pending subtask of (task, node, step) only while the task is
runnable at that step; finish-and-claim writes the success keyed by (id, exec_id); two
claimers never get the same subtask; a lost held connection is recovered from.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from helpers.storage import force_subtask, force_task, running_task
from sqlalchemy import event, text

from dxf_celery.errors import StorageUnavailableError
from dxf_celery.proto import SubtaskFinish, SubtaskState, TaskState
from dxf_celery.storage import TaskManager


def test_claim_starts_the_lowest_pending_subtask_of_this_node_and_step(task_manager: TaskManager) -> None:
    tm = task_manager
    task = running_task(tm, exec_ids=("n1", "n2"), n=4)
    claims = tm.subtask_claims("n1", task.id)
    try:
        first = claims.claim(1)
        assert first is not None
        subs = {s.id: s for s in tm.get_subtasks(task.id)}
        n1 = sorted(s.id for s in subs.values() if s.exec_id == "n1")
        assert first.subtask.id == n1[0] and first.subtask.state == SubtaskState.RUNNING
        assert first.subtask.start_time is not None
        assert subs[n1[0]].state == SubtaskState.RUNNING and subs[n1[0]].start_time is not None
        assert (first.task_state, first.task_concurrency, first.task_stamp) == (
            TaskState.RUNNING,
            task.concurrency,
            task.state_update_time,
        )
        second = claims.claim(1)
        assert second is not None and second.subtask.id == n1[1]
        assert claims.claim(1) is None  # n1 has no pending subtask left; n2's are not ours
        assert claims.claim(2) is None  # no such step
    finally:
        claims.close()
    assert sorted(s.state for s in tm.get_subtasks(task.id) if s.exec_id == "n2") == [SubtaskState.PENDING] * 2


@pytest.mark.parametrize("state", [TaskState.PAUSING, TaskState.REVERTING, TaskState.CANCELLING, TaskState.PAUSED])
def test_claim_refuses_a_task_that_is_not_runnable(task_manager: TaskManager, state: TaskState) -> None:
    tm = task_manager
    task = running_task(tm, n=2)
    force_task(tm, task.id, state=state)
    claims = tm.subtask_claims("n1", task.id)
    try:
        assert claims.claim(1) is None
        force_task(tm, task.id, state=TaskState.MODIFYING)  # modifying still runs subtasks
        assert claims.claim(1) is not None
        force_task(tm, task.id, state=TaskState.RUNNING, step=2)  # the task moved on
        assert claims.claim(1) is None
    finally:
        claims.close()
    assert Counter(s.state for s in tm.get_subtasks(task.id)) == {SubtaskState.RUNNING: 1, SubtaskState.PENDING: 1}


def test_claim_fingerprint_changes_with_a_modification(task_manager: TaskManager) -> None:
    tm = task_manager
    task = running_task(tm, n=3)
    claims = tm.subtask_claims("n1", task.id)
    try:
        before = claims.claim(1)
        assert before is not None
        force_task(tm, task.id, concurrency=3, state_update_time=task.create_time)
        after = claims.claim(1)
        assert after is not None
        assert (after.task_concurrency, after.task_stamp) == (3, task.create_time)
        assert (before.task_concurrency, before.task_stamp) != (after.task_concurrency, after.task_stamp)
    finally:
        claims.close()


def test_finish_and_claim_writes_meta_and_summary_then_claims_the_next(task_manager: TaskManager) -> None:
    tm = task_manager
    task = running_task(tm, n=2)
    claims = tm.subtask_claims("n1", task.id)
    try:
        first = claims.claim(1)
        assert first is not None
        second = claims.finish_and_claim(SubtaskFinish(first.subtask.id, b"new-meta", '{"rows": 5}'), 1)
        assert second is not None and second.subtask.id != first.subtask.id
        done = tm.get_subtasks(task.id)[0]
        assert (done.id, done.state, done.meta, done.summary) == (
            first.subtask.id,
            SubtaskState.SUCCEED,
            b"new-meta",
            '{"rows": 5}',
        )
        assert done.end_time is not None
        # No summary given: the stored one stays; no step: nothing is claimed.
        force_subtask(tm, second.subtask.id, summary='{"kept": 1}')
        assert claims.finish_and_claim(SubtaskFinish(second.subtask.id, b"m2"), None) is None
    finally:
        claims.close()
    last = tm.get_subtasks(task.id)[1]
    assert (last.state, last.meta, last.summary) == (SubtaskState.SUCCEED, b"m2", '{"kept": 1}')


def test_finish_is_keyed_by_exec_id(task_manager: TaskManager) -> None:
    """A subtask the balancer moved to another node cannot be finished by its old node."""
    tm = task_manager
    task = running_task(tm, n=2)
    claims = tm.subtask_claims("n1", task.id)
    try:
        first = claims.claim(1)
        assert first is not None
        force_subtask(tm, first.subtask.id, exec_id="n2", state=SubtaskState.PENDING)
        nxt = claims.finish_and_claim(SubtaskFinish(first.subtask.id, b"late"), 1)
        assert nxt is not None and nxt.subtask.id != first.subtask.id
    finally:
        claims.close()
    moved = next(s for s in tm.get_subtasks(task.id) if s.id == first.subtask.id)
    assert (moved.exec_id, moved.state, moved.meta) == ("n2", SubtaskState.PENDING, first.subtask.meta)


def test_two_claimers_never_get_the_same_subtask(task_manager: TaskManager, db_url: str) -> None:
    """Two executors of one task on one node (a stale one and a new one), each with its own
    connection, claim in lockstep: every subtask is claimed exactly once."""
    n = 60
    tm = task_manager
    task = running_task(tm, n=n)
    managers = [TaskManager(db_url), TaskManager(db_url)]
    barrier = threading.Barrier(2, timeout=60)
    won: list[list[int]] = [[], []]

    def claimer(i: int) -> None:
        claims = managers[i].subtask_claims("n1", task.id)
        prev = None
        try:
            for _ in range(n):
                barrier.wait()
                got = claims.finish_and_claim(prev, 1)
                prev = SubtaskFinish(got.subtask.id, b"done") if got is not None else None
                if got is not None:
                    won[i].append(got.subtask.id)
            claims.finish_and_claim(prev, None)
        finally:
            claims.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a claimer hung"
    finally:
        for m in managers:
            m.dispose()
    counts = Counter(won[0] + won[1])
    assert len(counts) == n, "some subtask was never claimed"
    assert max(counts.values()) == 1, "a subtask was claimed twice"
    assert won[0] and won[1], "one claimer never won: the race was not contended"
    assert {s.state for s in tm.get_subtasks(task.id)} == {SubtaskState.SUCCEED}


def _kill_session(tm: TaskManager, db_kind: str, pid: int) -> None:
    with tm.write_engine.connect() as conn:
        if db_kind == "postgresql":
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        else:
            conn.execute(text(f"KILL {int(pid)}"))


@pytest.mark.parametrize("db_kind", ["postgresql", "mariadb"], indirect=True)
def test_a_lost_held_connection_is_replaced(task_manager: TaskManager, db_kind: str) -> None:
    """The server drops the executor's held connection: one call fails (transient), the next reconnects."""
    tm = task_manager
    task = running_task(tm, n=3)
    claims = tm.subtask_claims("n1", task.id)
    try:
        first = claims.claim(1)
        assert first is not None
        held = claims._conn
        assert held is not None
        pid_sql = "SELECT pg_backend_pid()" if db_kind == "postgresql" else "SELECT CONNECTION_ID()"
        pid = held.execute(text(pid_sql)).scalar_one()
        _kill_session(tm, db_kind, pid)
        with pytest.raises(StorageUnavailableError):
            claims.claim(1)
        again = claims.claim(1)
        assert again is not None and again.subtask.id != first.subtask.id
    finally:
        claims.close()


@pytest.mark.parametrize("finished", [390, 0], ids=["mostly-finished", "all-pending"])
def test_claim_uses_the_claim_index(task_manager: TaskManager, db_kind: str, finished: int) -> None:
    """The real claim statement reads pending rows through ix_dxf_subtask_claim, not the primary key,
    whether most rows are finished or all are pending (a step just planned)."""
    tm = task_manager
    task = running_task(tm, n=400)
    with tm.write_engine.begin() as conn:
        conn.execute(text("UPDATE dxf_subtask SET state = 'succeed' WHERE ordinal <= :n"), {"n": finished})
        analyze = {"postgresql": "ANALYZE dxf_subtask", "mariadb": "ANALYZE TABLE dxf_subtask", "sqlite": "ANALYZE"}
        conn.execute(text(analyze[db_kind]))
    # Capture the claim as the driver receives it, then EXPLAIN exactly that statement.
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            captured.append((statement, parameters))

    event.listen(tm.write_engine, "before_cursor_execute", capture)
    claims = tm.subtask_claims("n1", task.id)
    try:
        got = claims.claim(1)
        assert got is not None and got.subtask.ordinal == finished + 1
    finally:
        claims.close()
        event.remove(tm.write_engine, "before_cursor_execute", capture)
    statement, parameters = captured[-1]
    prefix = "EXPLAIN QUERY PLAN " if db_kind == "sqlite" else "EXPLAIN "
    raw = tm.write_engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(prefix + statement, parameters)
        plan_rows = cursor.fetchall()
        raw.rollback()
    finally:
        raw.close()
    plan_text = "\n".join(" ".join(str(c) for c in row) for row in plan_rows)
    if db_kind == "postgresql":
        # The pick is a range of the claim index (its order, no sort); the update finds the row by id.
        assert "Index Scan using ix_dxf_subtask_claim" in plan_text, plan_text
        assert "Sort" not in plan_text and "Seq Scan on dxf_subtask" not in plan_text, plan_text
        assert "Index Scan using pk_dxf_subtask" in plan_text, plan_text
    else:
        assert "ix_dxf_subtask_claim" in plan_text, plan_text


@pytest.mark.parametrize("db_kind", ["mariadb"], indirect=True)
def test_mariadb_finish_and_claim_is_one_autocommit_update_of_two_rows(task_manager: TaskManager) -> None:
    """No UPDATE ... RETURNING on MariaDB: finish + claim-next is still one statement, no COMMIT,
    then one read of the claimed row; the UPDATE reads the two ids by primary key, not by a scan."""
    tm = task_manager
    task = running_task(tm, n=400)
    with tm.write_engine.begin() as conn:
        conn.execute(text("UPDATE dxf_subtask SET state = 'succeed' WHERE ordinal <= 300"))
        conn.execute(text("ANALYZE TABLE dxf_subtask"))
    claims = tm.subtask_claims("n1", task.id)
    statements: list[tuple[str, Any]] = []
    commits: list[object] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, parameters))

    try:
        first = claims.claim(1)
        assert first is not None
        event.listen(tm.write_engine, "before_cursor_execute", capture)
        event.listen(tm.write_engine, "commit", lambda conn: commits.append(conn))
        second = claims.finish_and_claim(SubtaskFinish(first.subtask.id, b"m"), 1)
    finally:
        event.remove(tm.write_engine, "before_cursor_execute", capture)
        claims.close()
    assert second is not None and second.subtask.ordinal == first.subtask.ordinal + 1
    kinds = [s.lstrip().split()[0].upper() for s, _ in statements]
    assert kinds == ["UPDATE", "SELECT"], kinds
    assert not commits
    states = {s.id: s.state for s in tm.get_subtasks(task.id)}
    assert (states[first.subtask.id], states[second.subtask.id]) == (SubtaskState.SUCCEED, SubtaskState.RUNNING)
    statement, parameters = statements[0]
    raw = tm.write_engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        columns = [d[0] for d in cursor.description]
        plan = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    outer = next(p for p in plan if p["table"] == "dxf_subtask")
    assert (outer["type"], outer["key"]) == ("range", "PRIMARY") and int(outer["rows"]) <= 2, plan
