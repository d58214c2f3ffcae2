"""Routine operations never lose work (issue 9): warm shutdown and preemption drain, a frozen node fences itself.

Real ``celery worker`` processes (prefork) on Redis + PostgreSQL. The ``e2e`` task type
appends every subtask run to a file (start and end, with the outcome), so each test counts
executions: a non-idempotent task must succeed with every subtask run exactly once. Held
subtasks (``hold``) keep work open for as long as the test needs; no duration is guessed.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers.celery_apps.brokers import fresh_broker
from helpers.celery_apps.dxf_app import FAST_SETTINGS
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.celery_apps.harness import RunEvent
from helpers.celery_apps.types import release
from helpers.db import make_db_url
from helpers.waiting import wait_until

from dxf_celery.proto import TaskState

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.fault]

#: A drain that no loaded machine outlasts, inside a watchdog that leaves it room.
DRAIN_CONF = {"DXF_E2E_CONF": json.dumps({"dxf_drain_grace": 120, "dxf_shutdown_timeout": 240})}


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    yield from make_e2e(tmp_path, fresh_broker("redis"), make_db_url("postgresql", tmp_path))


def _starts(events: list[RunEvent], task_id: int) -> Counter[tuple[int, int]]:
    return Counter((e.step, e.ordinal) for e in events if e.task_id == task_id and e.kind == "start")


def _oks(events: list[RunEvent], task_id: int) -> Counter[tuple[int, int]]:
    return Counter(
        (e.step, e.ordinal) for e in events if e.task_id == task_id and e.kind == "end" and e.outcome == "ok"
    )


def _assert_ran_exactly_once(e2e: E2E, task_id: int, steps: int, subtasks: int) -> None:
    events = e2e.events()
    expected = {(s, o): 1 for s in range(1, steps + 1) for o in range(1, subtasks + 1)}
    assert dict(_starts(events, task_id)) == expected, f"starts per (step, ordinal): {dict(_starts(events, task_id))}"
    assert dict(_oks(events, task_id)) == expected


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_warm_shutdown_mid_step_drains_and_the_non_idempotent_task_succeeds(e2e: E2E, pool: str) -> None:
    w1 = e2e.procs.start_worker("w1@e2e", pool=pool, concurrency=3, slots=2, extra_env=DRAIN_CONF)
    e2e.procs.start_beat()
    hold = e2e.hold("shutdown")
    task = e2e.dxf.submit_task("shutdown", "e2e", meta=e2e.meta(steps=2, subtasks=3, idempotent=False, hold=hold))
    wait_until(lambda: e2e.running_subtasks(task.id, "w1@e2e"), 60, what="a subtask running on w1")
    w1.popen.send_signal(signal.SIGTERM)  # warm shutdown while the subtask is held
    wait_until(lambda: "draining: the running subtask may finish" in w1.log_text(), 60, what="w1's executor draining")
    release(hold)
    w1.popen.wait(120)
    assert "did not finish within its bound" not in w1.log_text()
    # w1 finished what it ran and started nothing else: another worker takes the rest.
    e2e.procs.start_worker("w2@e2e", pool=pool, concurrency=3, slots=2, extra_env=DRAIN_CONF)
    final = e2e.dxf.wait_task(task.id, timeout=120, raise_error=False)
    assert final.state == TaskState.SUCCEED, final.error
    _assert_ran_exactly_once(e2e, task.id, 2, 3)
    assert any(e.exec_id == "w1@e2e" and e.outcome == "ok" for e in e2e.events())


def test_a_drain_longer_than_the_node_ttl_keeps_the_node_alive(e2e: E2E) -> None:
    """The draining node heartbeats on: a live node judging it sees it alive past a whole TTL."""
    w1 = e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=3, slots=2, extra_env=DRAIN_CONF)
    e2e.procs.start_worker("w2@e2e", pool="prefork", concurrency=3, slots=2, extra_env=DRAIN_CONF)
    e2e.procs.start_beat()
    hold = e2e.hold("long-drain")
    task = e2e.dxf.submit_task("long-drain", "e2e", meta=e2e.meta(steps=1, subtasks=4, idempotent=False, hold=hold))
    wait_until(lambda: e2e.running_subtasks(task.id, "w1@e2e"), 60, what="a subtask running on w1")
    w1.popen.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining: the running subtask may finish" in w1.log_text(), 60, what="w1's executor draining")

    def heartbeat() -> datetime | None:
        return next((n.heartbeat for n in e2e.dxf.task_manager.get_all_nodes() if n.id == "w1@e2e"), None)

    first = heartbeat()
    assert first is not None
    ttl = timedelta(seconds=float(FAST_SETTINGS["dxf_node_ttl"]))
    # database-clock times: w1 still writes its heartbeat more than a TTL into its drain
    wait_until(lambda: (hb := heartbeat()) is not None and hb > first + ttl, 120, what="w1 heartbeating past a TTL")
    assert e2e.running_subtasks(task.id, "w1@e2e"), "w1's subtask was taken away during the drain"
    release(hold)
    w1.popen.wait(120)
    final = e2e.dxf.wait_task(task.id, timeout=120, raise_error=False)
    assert final.state == TaskState.SUCCEED, final.error
    _assert_ran_exactly_once(e2e, task.id, 1, 4)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_preemption_by_a_priority_1_task_lets_the_non_idempotent_task_finish_its_subtask(e2e: E2E, pool: str) -> None:
    w1 = e2e.procs.start_worker("w1@e2e", pool=pool, concurrency=3, slots=2, extra_env=DRAIN_CONF)
    e2e.procs.start_beat()
    hold = e2e.hold("low")
    low = e2e.dxf.submit_task(
        "low", "e2e", meta=e2e.meta(steps=2, subtasks=3, idempotent=False, hold=hold), concurrency=2
    )
    wait_until(lambda: e2e.running_subtasks(low.id, "w1@e2e"), 60, what="low running on w1")
    high = e2e.dxf.submit_task("high", "e2e", meta=e2e.meta(steps=1, subtasks=2), concurrency=2, priority=1)
    wait_until(lambda: f"preempts task {low.id}" in w1.log_text(), 60, what="w1 preempting low")
    wait_until(lambda: "draining: the running subtask may finish" in w1.log_text(), 60, what="low's executor draining")
    release(hold)
    for task in (high, low):
        final = e2e.dxf.wait_task(task.id, timeout=120, raise_error=False)
        assert final.state == TaskState.SUCCEED, (task.key, final.error)
    _assert_ran_exactly_once(e2e, low.id, 2, 3)
    _assert_ran_exactly_once(e2e, high.id, 1, 2)
    assert "left running and is not idempotent" not in w1.log_text()


def test_a_worker_frozen_past_the_ttl_stops_the_subtask_that_moved_when_it_wakes(e2e: E2E) -> None:
    w1 = e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_beat()
    hold = e2e.hold("frozen")
    task = e2e.dxf.submit_task("frozen", "e2e", meta=e2e.meta(steps=1, subtasks=2, idempotent=True, hold=hold))
    (target, *_) = wait_until(lambda: e2e.running_subtasks(task.id, "w1@e2e"), 60, what="a subtask running on w1")
    w1.signal(signal.SIGSTOP)  # main process and pool children: no heartbeat, no step code
    try:
        wait_until(
            lambda: e2e.dxf.task_manager.get_subtask(target.id).exec_id == "w2@e2e",  # type: ignore[attr-defined]
            120,
            what="w1's subtask moved to w2 once w1 is past the node TTL",
        )
    finally:
        w1.signal(signal.SIGCONT)
    ordinal = target.ordinal  # type: ignore[attr-defined]

    def w1_run_ended() -> list[RunEvent]:
        return [e for e in e2e.events() if e.kind == "end" and e.exec_id == "w1@e2e" and e.ordinal == ordinal]

    (ended,) = wait_until(w1_run_ended, 60, what="w1's copy of the moved subtask stopped")
    assert ended.outcome == "SubtaskMovedAwayError", ended
    assert "without running (frozen?)" in w1.log_text()  # the wake-up check fired, not only the period
    release(hold)
    final = e2e.dxf.wait_task(task.id, timeout=120, raise_error=False)
    assert final.state == TaskState.SUCCEED, final.error
    oks = _oks(e2e.events(), task.id)
    assert dict(oks) == {(1, 1): 1, (1, 2): 1}, oks  # no subtask succeeded twice
    (winner,) = [e for e in e2e.events() if e.kind == "end" and e.ordinal == ordinal and e.outcome == "ok"]
    assert winner.exec_id == "w2@e2e"
