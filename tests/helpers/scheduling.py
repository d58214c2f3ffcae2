"""Driving the scheduler pass by hand: nodes registered with ``init_meta``, executors played
by marking subtasks, ``Manager.schedule_once()`` called by the test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from dxf_celery import handle
from dxf_celery.proto import SubtaskState, TaskState
from dxf_celery.scheduler import Manager, SchedulerIntervals
from dxf_celery.storage import TaskManager
from helpers.waiting import wait_until

#: Fast passes, but nodes registered by hand must not die of old age mid-test.
INTERVALS = replace(SchedulerIntervals.fast(), node_ttl=60.0)


def manager(tm: TaskManager, owner: str = "s1", **kw: object) -> Manager:
    return Manager(tm, owner_id=owner, intervals=kw.pop("intervals", INTERVALS), **kw)  # type: ignore[arg-type]


def nodes(tm: TaskManager, *ids: str, cpu: int = 8, role: str = "") -> None:
    for exec_id in ids:
        tm.init_meta(exec_id, role, cpu)


def run_step(tm: TaskManager, task_id: int, step: int) -> int:
    """Play the executors: run every pending subtask of ``step`` to success."""
    n = 0
    for s in tm.get_subtasks(task_id, step, with_history=False):
        if s.state == SubtaskState.PENDING:
            tm.start_subtask(s.id, s.exec_id)
            tm.finish_subtask(s.exec_id, s.id, s.meta)
            n += 1
    return n


def passes(m: Manager, n: int = 1) -> None:
    for _ in range(n):
        assert m.schedule_once()


def pass_until(m: Manager, predicate: Callable[[], object], what: str) -> None:
    """Run passes until ``predicate`` holds (planning retries wait out a backoff between passes)."""

    def one() -> object:
        passes(m)
        return predicate()

    wait_until(one, what=what)


def state(tm: TaskManager, task_id: int) -> TaskState:
    return handle.get_task(tm, task_id).state
