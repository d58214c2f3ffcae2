"""Node liveness: suspect before lost, and no verdict the scheduler's own outage would make wrong.

The pure rules (:func:`judge_nodes`, :class:`ContactWatch`) first, then the scheduler Manager
on SQLite, PostgreSQL and MariaDB, with the test playing the nodes (heartbeats by hand) so
that who is silent, and when, is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from helpers.cluster_types import TASK_TYPE, demo_meta
from sqlalchemy import update

from dxf_celery import handle
from dxf_celery.proto import ManagedNode, SubtaskState
from dxf_celery.scheduler import Manager, SchedulerIntervals
from dxf_celery.scheduler.nodes import ContactWatch, judge_nodes
from dxf_celery.storage import TaskManager
from dxf_celery.storage.clock import read_server_now
from dxf_celery.storage.tables import node_table

TTL = 2.0
GRACE = 2.0
INTERVALS = replace(SchedulerIntervals.fast(), node_ttl=TTL, node_lost_grace=GRACE, balance=0.0)
NOW = datetime(2030, 1, 1, 12, 0, 0)


def _node(host: str, age: float | None) -> ManagedNode:
    return ManagedNode(host, "", 4, None if age is None else NOW - timedelta(seconds=age))


# ---------------------------------------------------------------- the rules


def test_judge_splits_live_suspect_lost() -> None:
    nodes = [_node("a", 0.5), _node("b", 3.0), _node("c", 30.0), _node("d", None)]
    v = judge_nodes(nodes, NOW, ttl=2.0, lost_grace=10.0, watched=5.0)
    assert [n.id for n in v.live] == ["a"]
    assert [n.id for n in v.suspect] == ["b"]
    assert [n.id for n in v.lost] == ["c", "d"]
    assert v.withheld == ""


def test_judge_withholds_until_the_scheduler_watched_a_full_ttl() -> None:
    nodes = [_node("a", 0.5), _node("b", 30.0)]
    v = judge_nodes(nodes, NOW, ttl=2.0, lost_grace=10.0, watched=1.9)
    assert [n.id for n in v.live] == ["a", "b"] and not v.suspect and not v.lost
    assert "watched" in v.withheld
    assert [n.id for n in judge_nodes(nodes, NOW, ttl=2.0, lost_grace=10.0, watched=2.0).lost] == ["b"]


def test_judge_never_condemns_every_node_at_once() -> None:
    nodes = [_node("a", 30.0), _node("b", 40.0)]
    v = judge_nodes(nodes, NOW, ttl=2.0, lost_grace=10.0, watched=100.0)
    assert len(v.live) == 2 and not v.suspect and not v.lost
    assert "every node" in v.withheld


def test_contact_watch_restarts_after_a_gap_or_a_failure() -> None:
    w = ContactWatch()
    assert w.contact(1.0, now=10.0) == 0.0
    assert w.contact(1.0, now=10.5) == 0.5
    assert w.contact(1.0, now=11.4) == pytest.approx(1.4)
    assert w.contact(1.0, now=12.5) == 0.0  # 1.1 s without a pass: a gap
    assert w.contact(1.0, now=13.0) == 0.5
    w.lost()
    assert w.contact(1.0, now=13.1) == 0.0


# ---------------------------------------------------------------- the Manager on real databases


pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py


def _age(tm: TaskManager, host: str, seconds: float) -> None:
    with tm.write_engine.begin() as conn:
        now = read_server_now(conn)
        conn.execute(
            update(node_table).where(node_table.c.host == host).values(heartbeat=now - timedelta(seconds=seconds))
        )


def _ids(nodes: Sequence[ManagedNode]) -> set[str]:
    return {n.id for n in nodes}


def _run(
    m: Manager,
    tm: TaskManager,
    beating: Sequence[str],
    until: Callable[[], bool],
    *,
    invariant: Callable[[], None] = lambda: None,
    timeout: float = 30.0,
) -> None:
    """Passes every 50 ms while ``beating`` nodes heartbeat, until ``until()``; checks ``invariant`` each pass."""
    deadline = time.monotonic() + timeout
    while True:
        for host in beating:
            tm.heartbeat(host)
        assert m.schedule_once()
        invariant()
        if until():
            return
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _start(tm: TaskManager, *hosts: str) -> tuple[Manager, int]:
    for h in hosts:
        tm.init_meta(h, "", 8)
    m = Manager(tm, owner_id="s1", intervals=INTERVALS)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6))
    assert m.schedule_once()
    return m, task.id


def _watched(m: Manager, tm: TaskManager, beating: Sequence[str]) -> None:
    """Run passes for a bit more than a TTL so the scheduler has watched the database."""
    start = time.monotonic()
    _run(m, tm, beating, lambda: time.monotonic() - start > TTL * 1.2)


def test_silent_node_is_suspect_first_then_lost(task_manager: TaskManager) -> None:
    tm = task_manager
    m, task_id = _start(tm, "n1", "n2", "n3")
    running = next(s for s in tm.get_subtasks(task_id, 1) if s.exec_id == "n3")
    tm.start_subtask(running.id, "n3")
    _run(m, tm, ["n1", "n2"], lambda: "n3" in _ids(m.node_manager.suspect_nodes()))
    assert "n3" in _ids(tm.get_all_nodes())  # suspect: the row stays
    assert "n3" not in _ids(m.node_manager.get_nodes())  # but it gets no new work
    _run(
        m,
        tm,
        ["n1", "n2"],
        lambda: (
            not [s for s in tm.get_active_subtasks(task_id) if s.state == SubtaskState.PENDING and s.exec_id == "n3"]
        ),
    )
    kept = next(s for s in tm.get_active_subtasks(task_id) if s.id == running.id)
    assert (kept.exec_id, kept.state) == ("n3", SubtaskState.RUNNING)  # its running subtask stays its own
    # Silent past the grace: lost, deleted, and now the running subtask moves too.
    _run(m, tm, ["n1", "n2"], lambda: "n3" not in _ids(tm.get_all_nodes()))
    _run(
        m,
        tm,
        ["n1", "n2"],
        lambda: next(s for s in tm.get_active_subtasks(task_id) if s.id == running.id).exec_id in {"n1", "n2"},
    )


def test_suspect_node_that_comes_back_finishes_its_running_subtask(task_manager: TaskManager) -> None:
    tm = task_manager
    m, task_id = _start(tm, "n1", "n2", "n3")
    running = next(s for s in tm.get_subtasks(task_id, 1) if s.exec_id == "n3")
    tm.start_subtask(running.id, "n3")
    _run(m, tm, ["n1", "n2"], lambda: "n3" in _ids(m.node_manager.suspect_nodes()))
    _run(m, tm, ["n1", "n2"], lambda: True)  # a balancing pass while it is suspect
    # n3 wakes up within the grace (a frozen VM, a long pause): it heartbeats and is live again.
    _run(m, tm, ["n1", "n2", "n3"], lambda: "n3" in _ids(m.node_manager.get_nodes()))
    assert not m.node_manager.suspect_nodes()
    tm.finish_subtask("n3", running.id, running.meta)  # still its own: the finish lands
    (done,) = [s for s in tm.get_subtasks(task_id, 1) if s.id == running.id]
    assert (done.exec_id, done.state) == ("n3", SubtaskState.SUCCEED)


def test_after_the_schedulers_own_outage_every_node_gets_a_grace(task_manager: TaskManager) -> None:
    """The scheduler ran no pass for longer than a TTL (beat gone, frozen, cut off) while n2
    and n3 could not write either: on return it must not take their stale heartbeats as death."""
    tm = task_manager
    m, _ = _start(tm, "n1", "n2", "n3")
    _watched(m, tm, ["n1", "n2", "n3"])
    gap_end = time.monotonic() + TTL * 1.5
    while time.monotonic() < gap_end:  # only n1 writes; no scheduler pass at all
        tm.heartbeat("n1")
        time.sleep(0.05)

    def n2_never_suspect() -> None:
        assert "n2" not in _ids(m.node_manager.suspect_nodes())
        assert "n2" in _ids(tm.get_all_nodes())

    # The first pass back sees n2 and n3 silent for 1.5 TTL; n2 heartbeats again right
    # after it, n3 never does. Only n3 is judged, once the scheduler watched for a TTL (by
    # then its silence exceeds TTL + grace: it goes straight to lost).
    assert m.schedule_once()
    n2_never_suspect()
    assert "n3" not in _ids(m.node_manager.suspect_nodes())
    _run(m, tm, ["n1", "n2"], lambda: "n3" not in _ids(tm.get_all_nodes()), invariant=n2_never_suspect)


def test_every_node_silent_at_once_is_not_a_verdict(task_manager: TaskManager) -> None:
    tm = task_manager
    m, task_id = _start(tm, "n1", "n2", "n3")
    _watched(m, tm, ["n1", "n2", "n3"])
    for h in ("n1", "n2", "n3"):
        _age(tm, h, 120)
    for _ in range(5):
        assert m.schedule_once()
    assert _ids(tm.get_all_nodes()) == {"n1", "n2", "n3"} and not m.node_manager.suspect_nodes()
    assert {s.exec_id for s in tm.get_active_subtasks(task_id)} == {"n1", "n2", "n3"}
    # One node writes again: the others' silence is now evidence.
    _run(m, tm, ["n1"], lambda: _ids(tm.get_all_nodes()) == {"n1"})
