"""Crash leftovers and error classes: idempotent re-runs, non-idempotent failures, fatal errors."""

from __future__ import annotations

import threading

import pytest
from helpers.executor import Cluster, RetryableError, TestType, plan_task, states
from helpers.waiting import wait_until

from dxf_celery.context import Context
from dxf_celery.errors import NonIdempotentSubtaskError
from dxf_celery.proto import Subtask, SubtaskState, Task
from dxf_celery.storage import TaskManager


def settled(tm: TaskManager, task_id: int) -> bool:
    return all(s.state not in (SubtaskState.PENDING, SubtaskState.RUNNING) for s in tm.get_subtasks(task_id))


@pytest.mark.parametrize("idempotent", [True, False])
def test_subtask_left_running_by_a_crash(cluster: Cluster, idempotent: bool) -> None:
    tm = cluster.tm
    tt = TestType("crash")
    tt.idempotent = idempotent
    tt.register()
    task_id = plan_task(tm, "kc", tt.name, ["n1", "n1"])
    first, second = tm.get_subtasks(task_id)
    tm.start_subtask(first.id, "n1")  # the node died while running it
    cluster.add("n1")
    wait_until(lambda: settled(tm, task_id), what="subtasks settled")
    row = tm.get_subtask(first.id)
    if idempotent:
        assert row.state == SubtaskState.SUCCEED
        assert len(tt.rec.runs_of(first.id)) == 1
    else:
        assert row.state == SubtaskState.FAILED
        assert row.error is not None and row.error.type_name == "NonIdempotentSubtaskError"
        assert str(row.error) == str(NonIdempotentSubtaskError())
        assert tt.rec.runs_of(first.id) == []  # never run twice
    assert tm.get_subtask(second.id).state == SubtaskState.SUCCEED  # the loop went on


@pytest.mark.parametrize("idempotent", [True, False])
def test_extra_running_subtask_found_by_balance_check(cluster: Cluster, idempotent: bool) -> None:
    """While one subtask runs, another one of ours left `running` (failover) is handled."""
    tm = cluster.tm
    tt = TestType("extra")
    tt.idempotent = idempotent
    tt.block_on_ctx()
    tt.register()
    task_id = plan_task(tm, "ke", tt.name, ["n1", "n1"])
    current, leftover = tm.get_subtasks(task_id)
    tm.start_subtask(leftover.id, "n1")
    cluster.add("n1")
    wait_until(lambda: tt.rec.runs, what="current subtask running")
    assert tt.rec.runs[0].subtask_id == current.id
    expected = SubtaskState.PENDING if idempotent else SubtaskState.FAILED
    wait_until(lambda: tm.get_subtask(leftover.id).state == expected, what=f"leftover {expected}")
    if not idempotent:
        err = tm.get_subtask(leftover.id).error
        assert err is not None and err.type_name == "NonIdempotentSubtaskError"
    tt.release(1)
    tt.release(2)
    wait_until(lambda: settled(tm, task_id), what="settled")
    assert tm.get_subtask(current.id).state == SubtaskState.SUCCEED


def test_retryable_error_leaves_row_running_and_reruns(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("retry")
    calls: list[int] = []
    lock = threading.Lock()

    def flaky(ctx: Context, st: Subtask) -> None:
        with lock:
            calls.append(st.id)
            if calls.count(st.id) < 3:
                raise RetryableError("try again")

    tt.behaviour = flaky
    tt.register()
    task_id = plan_task(tm, "kr", tt.name, ["n1", "n1"])
    cluster.add("n1")
    wait_until(lambda: settled(tm, task_id), what="settled")
    assert states(tm, task_id) == [SubtaskState.SUCCEED] * 2
    for s in tm.get_subtasks(task_id):
        assert [r.outcome for r in tt.rec.runs_of(s.id)] == ["error", "error", "ok"]


def test_exception_escaping_run_subtask_fails_one_subtask_and_loop_goes_on(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("fatal")

    def fail_first(ctx: Context, st: Subtask) -> None:
        if st.ordinal == 1:
            raise ZeroDivisionError("division by zero in user code")

    tt.behaviour = fail_first
    tt.register()
    task_id = plan_task(tm, "kf", tt.name, ["n1", "n1", "n1"])
    cluster.add("n1")
    wait_until(lambda: settled(tm, task_id), what="settled")
    assert states(tm, task_id) == [SubtaskState.FAILED, SubtaskState.SUCCEED, SubtaskState.SUCCEED]
    err = tm.get_subtasks(task_id)[0].error
    assert err is not None and (err.type_name, err.message) == ("ZeroDivisionError", "division by zero in user code")


def test_get_step_executor_error_is_fatal(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("no-step")
    tt.get_step_executor_error = lambda task: ValueError(f"no executor for step {task.step}")
    tt.register()
    task_id = plan_task(tm, "kg", tt.name, ["n1", "n1"])
    cluster.add("n1")
    wait_until(lambda: SubtaskState.FAILED in states(tm, task_id), what="a subtask failed")
    failed = [s for s in tm.get_subtasks(task_id) if s.state == SubtaskState.FAILED]
    assert failed[0].error is not None and failed[0].error.message == "no executor for step 1"
    assert tt.rec.runs == []


@pytest.mark.parametrize("where", ["executor_init", "step_init"])
def test_non_retryable_init_error_fails_a_subtask(cluster: Cluster, where: str) -> None:
    tm = cluster.tm
    tt = TestType(f"init-{where}")
    if where == "executor_init":
        tt.executor_init_error = lambda: OSError("disk missing")
    else:
        tt.step_init_error = lambda: OSError("disk missing")
    tt.register()
    task_id = plan_task(tm, "ki", tt.name, ["n1"])
    cluster.add("n1")
    wait_until(lambda: states(tm, task_id) == [SubtaskState.FAILED], what="subtask failed")
    err = tm.get_subtasks(task_id)[0].error
    assert err is not None and (err.type_name, err.message) == ("OSError", "disk missing")
    assert tt.rec.runs == []


@pytest.mark.parametrize("where", ["executor_init", "step_init"])
def test_retryable_init_error_is_tried_again(cluster: Cluster, where: str) -> None:
    tm = cluster.tm
    tt = TestType(f"rinit-{where}")
    attempts: list[int] = []

    def flaky_init() -> BaseException | None:
        attempts.append(1)
        return RetryableError("not ready yet") if len(attempts) < 3 else None

    if where == "executor_init":
        tt.executor_init_error = flaky_init
    else:
        tt.step_init_error = flaky_init
    tt.register()
    task_id = plan_task(tm, "kri", tt.name, ["n1"])
    cluster.add("n1")
    wait_until(lambda: states(tm, task_id) == [SubtaskState.SUCCEED], what="succeeds after retries")
    assert len(attempts) >= 3


def test_unknown_task_type_fails_a_subtask(cluster: Cluster) -> None:
    tm = cluster.tm
    task_id = plan_task(tm, "ku", "never-registered", ["n1"])
    mgr = cluster.add("n1")
    wait_until(lambda: states(tm, task_id) == [SubtaskState.FAILED], what="subtask failed")
    err = tm.get_subtasks(task_id)[0].error
    assert err is not None and err.type_name == "UnknownTaskTypeError"
    assert "never-registered" in err.message
    assert mgr.slot_manager.used_slots() == 0


def test_executor_exits_when_task_is_reverted_and_moved_to_history(cluster: Cluster) -> None:
    """A task reverted and moved to history under a running executor makes it exit cleanly."""
    tm = cluster.tm
    tt = TestType("gone")
    tt.block_on_ctx()
    tt.register()
    mgr = cluster.add("n1")
    task_id = plan_task(tm, "kgone", tt.name, ["n1"])
    wait_until(lambda: tt.rec.runs, what="running")
    task: Task = tm.get_task_by_id(task_id)
    assert tm.start_reverting(task_id, task.state, RuntimeError("x"))
    assert tm.finish_reverting(task_id)
    tm.transfer_tasks_to_history([tm.get_task_by_id(task_id)])
    wait_until(lambda: mgr.running_task_ids() == [], what="executor exits")
    assert tt.rec.runs[0].outcome == "cancelled"
