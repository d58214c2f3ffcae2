"""Parallel subtasks on real ``celery worker`` processes (prefork, Redis + PostgreSQL).

On prefork the executor runs on a pool child's main thread, which the SIGUSR1 path
interrupts; the extra lanes run on threads of that child. Overlap is shown by held subtasks
all running at once (the log's start/end pairs), cancellation by busy subtasks that only the
framework's forced interruption can stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.celery_apps.brokers import fresh_broker
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.celery_apps.harness import max_parallel_by_node
from helpers.celery_apps.types import release
from helpers.db import make_db_url
from helpers.waiting import wait_until

from dxf_celery.proto import SubtaskState, TaskState

pytestmark = [pytest.mark.celery, pytest.mark.slow]


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    yield from make_e2e(tmp_path, fresh_broker("redis"), make_db_url("postgresql", tmp_path))


def test_prefork_runs_concurrency_subtasks_of_one_task_at_once(e2e: E2E) -> None:
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=2, slots=4)
    e2e.procs.start_beat()
    hold = e2e.hold("three")
    meta = e2e.meta(steps=2, subtasks=6, parallel=True, hold=hold)
    task = e2e.dxf.submit_task("par-prefork", "e2e", meta=meta, concurrency=3)
    # Held until released: three running at once on one node can only be three lanes.
    wait_until(lambda: len(e2e.running_subtasks(task.id, "w1@e2e")) == 3, 60, what="three subtasks running")
    release(hold)
    assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    events = [e for e in e2e.events() if e.task_id == task.id]
    starts = Counter((e.step, e.ordinal) for e in events if e.kind == "start")
    assert dict(starts) == {(s, o): 1 for s in (1, 2) for o in range(1, 7)}  # each ran once
    assert len({e.pid for e in events}) == 1  # one executor process ran them all
    assert max_parallel_by_node(events) == {"w1@e2e": 3}


def test_prefork_cancel_interrupts_every_lane(e2e: E2E) -> None:
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=2, slots=4)
    e2e.procs.start_beat()
    meta = e2e.meta(steps=1, subtasks=5, parallel=True, mode="busy", hold=e2e.hold("never"))
    task = e2e.dxf.submit_task("par-cancel", "e2e", meta=meta, concurrency=3)
    wait_until(lambda: len(e2e.running_subtasks(task.id, "w1@e2e")) == 3, 60, what="three subtasks running")
    assert e2e.dxf.cancel_task(task.id)
    final = e2e.dxf.wait_task(task.id, timeout=60, raise_error=False)
    assert final.state == TaskState.REVERTED

    def all_stopped() -> bool:
        events = [e for e in e2e.events() if e.task_id == task.id]
        return len([e for e in events if e.kind == "end"]) == len([e for e in events if e.kind == "start"]) == 3

    # Busy subtasks never look at their context: each lane was interrupted by the framework.
    wait_until(all_stopped, 60, what="the three busy subtasks to stop")
    ends = [e for e in e2e.events() if e.task_id == task.id and e.kind == "end"]
    assert [e.outcome for e in ends] == ["ExecutorCancelledError"] * 3, ends
    assert {s.state for s in e2e.dxf.get_subtasks(task.id)} == {SubtaskState.CANCELED}  # the scheduler cancels the rest
    assert e2e.procs.procs["w1@e2e"].alive()
