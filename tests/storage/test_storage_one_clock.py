"""One clock: every stored time that orders or judges is the database server's, never a client's.

A client whose clock is wrong cannot be arranged for real (the test machine has one clock),
so :func:`skewed_client_clock` makes every ``utcnow`` a dxf_celery module could call return
a wrong, *falling* time. Storage must not notice: each stamp lies between two readings of the
server clock, ranks follow insertion, heartbeats and leases are judged on the server's time.
Runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from helpers.storage import plan
from sqlalchemy import select

from dxf_celery import handle
from dxf_celery.proto import NORMAL_PRIORITY, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.storage.clock import read_server_now
from dxf_celery.storage.tables import lease_table, subtask_table, task_history_table
from dxf_celery.taskexecutor.slots import SlotManager


@pytest.fixture
def skewed_client_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every dxf_celery ``utcnow`` returns a time a year off that goes *backwards* on each call."""
    state = {"t": datetime(2001, 1, 1)}
    lock = threading.Lock()

    def wrong_now() -> datetime:
        with lock:
            state["t"] -= timedelta(seconds=1)
            return state["t"]

    for name, module in list(sys.modules.items()):
        if name.startswith("dxf_celery") and hasattr(module, "utcnow"):
            monkeypatch.setattr(module, "utcnow", wrong_now)
    yield


def _window(tm: TaskManager) -> datetime:
    with tm.read_engine.connect() as conn:
        return read_server_now(conn)


def _between(before: datetime, value: datetime | None, after: datetime) -> bool:
    return value is not None and before <= value <= after


@pytest.mark.usefixtures("skewed_client_clock")
def test_every_stamp_is_the_servers(task_manager: TaskManager) -> None:
    tm = task_manager
    before = _window(tm)
    tm.init_meta("n1", "", cpu_count=4)
    task = handle.submit_task(tm, "k", "t")
    assert tm.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], 2))
    assert tm.try_acquire_lease("scheduler", "me", 30)
    assert tm.heartbeat("n1")
    assert tm.succeed(task.id)
    after = _window(tm)

    task = tm.get_task_by_id(task.id)
    assert _between(before, task.create_time, after)
    assert _between(before, task.start_time, after)
    assert _between(before, task.state_update_time, after)
    assert _between(before, task.end_time, after)
    (node,) = tm.get_all_nodes()
    assert _between(before, node.heartbeat, after)
    with tm.read_engine.connect() as conn:
        stamps = conn.execute(select(subtask_table.c.create_time)).scalars().all()
        expires = conn.execute(select(lease_table.c.expires_at)).scalar_one()
    assert stamps and all(_between(before, s, after) for s in stamps)
    assert _between(before + timedelta(seconds=30), expires, after + timedelta(seconds=30))


@pytest.mark.usefixtures("skewed_client_clock")
def test_history_stamp_and_purge_use_the_server_clock(task_manager: TaskManager) -> None:
    tm = task_manager
    task = handle.submit_task(tm, "k", "t")
    tm.fail(task.id, TaskState.PENDING, RuntimeError("x"))
    before = _window(tm)
    assert tm.transfer_tasks_to_history([tm.get_task_by_id(task.id)]) == 1
    after = _window(tm)
    with tm.read_engine.connect() as conn:
        moved = conn.execute(select(task_history_table.c.state_update_time)).scalar_one()
    assert _between(before, moved, after)
    # A client clock a year behind would keep everything; the server's cutoff purges it.
    from dxf_celery.storage.retention import purge_history

    assert purge_history(tm, timedelta(0)).tasks == 1


@pytest.mark.usefixtures("skewed_client_clock")
def test_heartbeats_and_leases_are_judged_on_the_server_clock(task_manager: TaskManager) -> None:
    tm = task_manager
    tm.init_meta("n1", "", cpu_count=4)
    # The client's clock is a year behind: judged on it, every fresh heartbeat would look
    # a year in the future, every lease unexpired forever.
    assert tm.get_dead_nodes(5) == []
    assert tm.try_acquire_lease("scheduler", "a", 0.2)
    assert tm.get_lease_owner("scheduler") == "a"
    threading.Event().wait(0.3)
    assert tm.get_lease_owner("scheduler") is None
    assert tm.try_acquire_lease("scheduler", "b", 30)


@pytest.mark.usefixtures("skewed_client_clock")
def test_ranks_follow_insertion_whatever_the_client_clock(task_manager: TaskManager) -> None:
    """The client clock falls on each read: stamped by it, later tasks would rank first."""
    tm = task_manager
    ids = [handle.submit_task(tm, f"k{i}", "t").id for i in range(10)]
    assert [t.id for t in tm.get_top_unfinished_tasks()] == ids


def test_equal_priority_tasks_from_many_threads_never_preempt_each_other(task_manager: TaskManager) -> None:
    """50 equal-priority tasks from 10 threads: whatever their stamps, none names another a victim."""
    tm = task_manager
    tm.init_meta("n1", "", cpu_count=2)
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def submit(worker: int) -> None:
        try:
            barrier.wait(30)
            for i in range(5):
                handle.submit_task(tm, f"w{worker}-{i}", "t", priority=NORMAL_PRIORITY)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    tasks = tm.get_top_unfinished_tasks(limit=100)
    assert len(tasks) == 50
    before = _window(tm)
    assert all(t.create_time <= before for t in tasks)
    # A node with 2 slots runs any two of them; every other one must wait, never preempt.
    for first in range(len(tasks)):
        for second in range(len(tasks)):
            slots = SlotManager(1)
            assert slots.alloc(tasks[first])
            if second != first:
                assert slots.can_alloc(tasks[second]) == (False, [])
