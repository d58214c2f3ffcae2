"""Planning guards on real databases: garbage planner output reverts its task at once, retryable
planning errors back off and revert after a bound, and neither stalls the other tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from helpers.cluster_types import RECORDER, TASK_TYPE, demo_meta
from helpers.scheduling import INTERVALS, manager, nodes, pass_until, passes, run_step, state

from dxf_celery import handle
from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Task, TaskBase, TaskState
from dxf_celery.scheduler import (
    BaseScheduler,
    Extension,
    TaskHandle,
    register_scheduler_factory,
)
from dxf_celery.storage import TaskManager

pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py


@pytest.mark.parametrize("retryable", [True, False])
@pytest.mark.parametrize("step", [1, 2])
def test_planning_errors(task_manager: TaskManager, retryable: bool, step: int) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    plan_error = {"step": step, "times": 2, "retryable": retryable}
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(plan_error=plan_error))
    for s in (1, 2):
        pass_until(
            m,
            lambda s=s: (
                (cur := handle.get_task(tm, task.id)).step == s  # type: ignore[misc]
                or cur.state not in (TaskState.PENDING, TaskState.RUNNING)
            ),
            f"step {s} planned or the task ended",
        )
        cur = handle.get_task(tm, task.id)
        if (cur.state, cur.step) != (TaskState.RUNNING, s):
            break
        run_step(tm, task.id, s)
    pass_until(m, lambda: state(tm, task.id) in (TaskState.SUCCEED, TaskState.REVERTED), "the task ended")
    t = handle.get_task(tm, task.id)
    if retryable:
        assert t.state == TaskState.SUCCEED
        assert RECORDER.plan_failures[(task.id, step)] == 3  # two failures, then the plan
    else:
        assert t.state == TaskState.REVERTED
        assert t.error is not None and t.error.message == f"planning step {step} failed"
        assert t.step == step - 1 if step == 2 else t.step == -1
        assert RECORDER.done == [(task.id, "reverting")]
        assert RECORDER.plan_failures[(task.id, step)] == 1  # never retried


def test_retryable_planning_error_reverts_after_the_bound(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm, intervals=replace(INTERVALS, planning_max_retries=3, planning_retry_max_interval=0.1))
    plan_error = {"step": 1, "times": 1000, "retryable": True}
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(plan_error=plan_error))
    pass_until(m, lambda: state(tm, task.id) == TaskState.REVERTED, "the task reverted")
    t = handle.get_task(tm, task.id)
    assert t.error is not None and (t.error.type_name, t.error.message) == (
        "RetryablePlanError",
        "planning step 1 failed",
    )
    assert RECORDER.plan_failures[(task.id, 1)] == 4  # the first try and three retries


def test_retryable_planning_error_backs_off(task_manager: TaskManager) -> None:
    """Many passes in a row do not call a failing planner once per pass."""
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm, intervals=replace(INTERVALS, schedule=3600.0, planning_retry_max_interval=3600.0))
    plan_error = {"step": 1, "times": 1000, "retryable": True}
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(plan_error=plan_error))
    passes(m, 20)
    assert RECORDER.plan_failures[(task.id, 1)] == 1  # the next try waits out the backoff
    assert state(tm, task.id) == TaskState.PENDING


class _GarbageExt(Extension):
    """A planner returning what ``task.meta`` names: a non-list, a list with a non-bytes, ..."""

    def get_next_step(self, task: TaskBase) -> int:
        return 1 if task.step == STEP_INIT else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        kind = task.meta.decode()
        if kind == "meta-str":
            task.meta = "oops"  # type: ignore[assignment]
            return [b"{}"]
        return {"none": None, "str": "abc", "ints": [b"{}", 5], "dict": {"a": 1}}[kind]  # type: ignore[return-value]


GARBAGE = "garbage"


def _register_garbage() -> None:
    register_scheduler_factory(GARBAGE, lambda ctx, task, param: BaseScheduler(ctx, task, param, _GarbageExt()))


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("none", "returned NoneType None"),
        ("str", "returned str 'abc'"),
        ("ints", "item 1 is int 5"),
        ("dict", "returned dict {'a': 1}"),
        ("meta-str", "set task.meta to str 'oops'"),
    ],
)
def test_garbage_plan_reverts_the_task_and_others_go_on(task_manager: TaskManager, kind: str, said: str) -> None:
    tm = task_manager
    nodes(tm, "n1")
    _register_garbage()
    m = manager(tm)
    bad = handle.submit_task(tm, "bad", GARBAGE, meta=kind.encode())
    pass_until(m, lambda: state(tm, bad.id) == TaskState.REVERTED, "the garbage task reverted")
    t = handle.get_task(tm, bad.id)
    assert t.error is not None and t.error.type_name == "InvalidPlanError"
    assert "task type 'garbage': on_next_subtasks_batch for step 1" in t.error.message
    assert said in t.error.message
    good = handle.submit_task(tm, "good", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1))
    pass_until(m, lambda: state(tm, good.id) == TaskState.RUNNING, "the normal task planned")
    run_step(tm, good.id, 1)
    pass_until(m, lambda: state(tm, good.id) == TaskState.SUCCEED, "the normal task succeeded")


def test_many_garbage_planners_do_not_stall_a_normal_task(task_manager: TaskManager) -> None:
    """More garbage tasks than DXF's 16 slot-holding schedulers, all ranked above a normal one."""
    tm = task_manager
    nodes(tm, "n1", "n2", cpu=64)
    _register_garbage()
    m = manager(tm)
    bad = [handle.submit_task(tm, f"bad{i}", GARBAGE, meta=b"none") for i in range(20)]
    good = handle.submit_task(tm, "good", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), priority=1000)
    pass_until(m, lambda: state(tm, good.id) == TaskState.RUNNING, "the normal task planned")
    run_step(tm, good.id, 1)
    pass_until(m, lambda: state(tm, good.id) == TaskState.SUCCEED, "the normal task succeeded")
    pass_until(m, lambda: all(state(tm, b.id) == TaskState.REVERTED for b in bad), "every garbage task reverted")
