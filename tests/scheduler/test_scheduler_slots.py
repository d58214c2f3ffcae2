"""Slot reservation on real databases: tasks no node can run, or whose nodes are full of
higher-ranked work, hold nothing; the number of slot-holding tasks follows the live slots."""

from __future__ import annotations

import pytest
from helpers.cluster_types import TASK_TYPE, demo_meta
from helpers.scheduling import manager, nodes, pass_until, passes, run_step, state

from dxf_celery import handle
from dxf_celery.proto import TaskState
from dxf_celery.storage import TaskManager

pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py


def test_tasks_of_a_missing_scope_hold_no_slots(task_manager: TaskManager) -> None:
    """60 tasks targeting a scope no node has, ranked above a normal task, on 2 nodes x 2 slots."""
    tm = task_manager
    nodes(tm, "n1", "n2", cpu=2)
    m = manager(tm)
    lost = [
        handle.submit_task(tm, f"lost{i}", TASK_TYPE, meta=demo_meta(steps=1), target_scope="gpu") for i in range(60)
    ]
    normal = handle.submit_task(tm, "normal", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2), concurrency=2)
    passes(m, 2)
    assert state(tm, normal.id) == TaskState.RUNNING
    assert m.scheduled_task_ids() == [normal.id]
    reasons = m.waiting_reasons()
    assert set(reasons) == {t.id for t in lost}
    assert "no live node may run it" in reasons[lost[0].id]
    run_step(tm, normal.id, 1)
    pass_until(m, lambda: state(tm, normal.id) == TaskState.SUCCEED, "the normal task succeeded")
    assert {state(tm, t.id) for t in lost} == {TaskState.PENDING}
    shown = handle.waiting_reason(tm, handle.get_task(tm, lost[0].id))
    assert shown is not None and "no node has the role 'gpu'" in shown
    # A node of that scope joins: they run after all.
    nodes(tm, "g1", cpu=2, role="gpu")
    pass_until(m, lambda: state(tm, lost[0].id) == TaskState.RUNNING, "the first gpu task planned")


def test_task_whose_nodes_are_full_waits_without_blocking_other_nodes(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "a1", cpu=2)
    nodes(tm, "g1", cpu=2, role="gpu")
    m = manager(tm)
    high = handle.submit_task(
        tm, "high", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=2, priority=1, target_scope="gpu"
    )
    passes(m)
    assert state(tm, high.id) == TaskState.RUNNING
    (sub,) = tm.get_subtasks(high.id, 1)
    tm.start_subtask(sub.id, "g1")  # g1 is full of higher-ranked work
    second = handle.submit_task(
        tm, "second", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=2, priority=2, target_scope="gpu"
    )
    normal = handle.submit_task(tm, "normal", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=2)
    passes(m, 2)
    assert state(tm, second.id) == TaskState.PENDING
    assert "higher-ranked work holds them" in m.waiting_reasons()[second.id]
    assert state(tm, normal.id) == TaskState.RUNNING  # a1 was not held for "second"
    shown = handle.waiting_reason(tm, handle.get_task(tm, second.id))
    assert shown is not None and "none of its 1 node(s) has 2 free slot(s)" in shown
    assert handle.waiting_reason(tm, handle.get_task(tm, second.id), check_slots=False) is None
    # The higher-ranked work ends: the waiting task gets g1.
    tm.finish_subtask("g1", sub.id, sub.meta)
    pass_until(m, lambda: state(tm, second.id) == TaskState.RUNNING, "the second gpu task planned")


def test_task_limit_follows_the_live_slots(task_manager: TaskManager) -> None:
    """Small tasks: more than DXF's fixed 16 hold slots when the nodes have the slots for them."""
    tm = task_manager
    nodes(tm, "n1", "n2", cpu=16)
    m = manager(tm)
    tasks = [handle.submit_task(tm, f"k{i}", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1)) for i in range(40)]
    passes(m, 2)
    assert m.task_limit() == 32
    running = [t for t in tasks if state(tm, t.id) == TaskState.RUNNING]
    assert [t.id for t in running] == [t.id for t in tasks[:32]]  # in rank order
    assert len(m.waiting_reasons()) == 8


def test_scheduler_gives_its_slots_back_when_its_nodes_go(task_manager: TaskManager) -> None:
    """A running task whose next step has no node to go to stops holding slots until one comes."""
    tm = task_manager
    nodes(tm, "a1", cpu=1)
    nodes(tm, "g1", cpu=1, role="gpu")
    m = manager(tm)
    gpu = handle.submit_task(tm, "gpu", TASK_TYPE, meta=demo_meta(steps=2, subtasks=1), target_scope="gpu")
    passes(m)
    assert state(tm, gpu.id) == TaskState.RUNNING
    run_step(tm, gpu.id, 1)
    tm.delete_dead_nodes(["g1"])
    passes(m, 2)
    assert gpu.id not in m.scheduled_task_ids()
    assert "no live node may run it" in m.waiting_reasons()[gpu.id]
    assert handle.get_task(tm, gpu.id).step == 1
    nodes(tm, "g1", cpu=1, role="gpu")
    pass_until(m, lambda: handle.get_task(tm, gpu.id).step == 2, "step 2 planned once the node is back")
