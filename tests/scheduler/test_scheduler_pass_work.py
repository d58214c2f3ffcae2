"""How much one scheduler pass moves: a task that ends frees its slots in that very pass.

Nodes played by hand (``init_meta``), executors played by marking subtasks; no timing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers.cluster_types import TASK_TYPE, demo_meta
from helpers.scheduling import INTERVALS, manager, nodes, passes, run_step, state
from helpers.waiting import wait_until

from dxf_celery import handle
from dxf_celery.proto import SubtaskState, TaskState
from dxf_celery.storage import TaskManager

pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py


def test_a_task_that_succeeds_hands_its_slots_over_in_the_same_pass(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", cpu=1)
    m = manager(tm)
    a, b, c = (handle.submit_task(tm, k, TASK_TYPE, meta=demo_meta(steps=1, subtasks=1)) for k in "abc")
    passes(m)
    # One slot: "a" reserves by stripes, "b" on the node (its usage read predates the plans), "c" waits.
    assert [state(tm, t.id) for t in (a, b, c)] == [TaskState.RUNNING, TaskState.RUNNING, TaskState.PENDING]
    assert m.scheduled_task_ids() == [a.id, b.id]
    run_step(tm, a.id, 1)
    run_step(tm, b.id, 1)
    passes(m)
    # One pass: both succeed, their schedulers go, and "c" is planned with the slots they freed.
    assert [state(tm, t.id) for t in (a, b, c)] == [TaskState.SUCCEED, TaskState.SUCCEED, TaskState.RUNNING]
    assert m.scheduled_task_ids() == [c.id]


def test_a_task_that_ends_reverted_hands_its_slots_over_in_the_same_pass(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", cpu=1)
    m = manager(tm)
    a, b, c = (handle.submit_task(tm, k, TASK_TYPE, meta=demo_meta(steps=1, subtasks=1)) for k in "abc")
    passes(m)
    assert state(tm, c.id) == TaskState.PENDING
    for t in (a, b):
        handle.cancel_task(tm, t.id)
        for s in tm.get_subtasks(t.id, 1, with_history=False):  # the node cancels them
            tm.start_subtask(s.id, s.exec_id)
            tm.update_subtask_state_and_error(s.exec_id, s.id, SubtaskState.CANCELED, None)
    for _ in range(5):
        passes(m)
        if state(tm, a.id) == TaskState.REVERTED:
            break
    assert (state(tm, a.id), state(tm, b.id)) == (TaskState.REVERTED, TaskState.REVERTED)
    # The pass that wrote "reverted" dropped both schedulers and planned the waiting task.
    assert state(tm, c.id) == TaskState.RUNNING
    assert m.scheduled_task_ids() == [c.id]


def test_last_pass_worked_says_whether_the_pass_moved_anything(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    passes(m)
    assert not m.last_pass_worked  # nothing to do
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1))
    passes(m)
    assert m.last_pass_worked  # planned step 1
    passes(m)
    assert not m.last_pass_worked  # its subtask has not run: nothing moved
    run_step(tm, task.id, 1)
    passes(m)
    assert m.last_pass_worked and state(tm, task.id) == TaskState.SUCCEED


def test_a_pass_that_did_work_is_followed_by_another_at_once(task_manager: TaskManager) -> None:
    """Empty steps need one pass per transition: with an hour between timed passes, only
    follow-up passes (one right after each pass that did work) can finish the task."""
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm, intervals=replace(INTERVALS, schedule=3600.0))
    task = handle.submit_task(tm, "empty", TASK_TYPE, meta=demo_meta(steps=2, subtasks=0))
    m.start()
    try:
        wait_until(lambda: state(tm, task.id) == TaskState.SUCCEED, 60, what="the empty task to succeed")
    finally:
        m.stop()
