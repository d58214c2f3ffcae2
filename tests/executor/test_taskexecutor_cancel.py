"""Cancellation: cancel vs cancel_running_subtask, SQL-derived revert/pause, subtasks moved away."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.executor import Cluster, TestType, plan_task, start_executor, states, step_done
from helpers.waiting import wait_until

from dxf_celery.proto import Modification, ModifyParam, SubtaskBase, SubtaskState, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Param


@pytest.mark.parametrize("how", ["cancel", "cancel_running_subtask"])
def test_cancel_leaves_row_and_cancel_running_subtask_marks_canceled(
    task_manager: TaskManager, make_param: Callable[..., Param], how: str
) -> None:
    tm = task_manager
    tt = TestType(f"c-{how}")
    tt.block_on_ctx()
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: tt.rec.runs, what="subtask running")
    getattr(executor, how)()
    if how == "cancel":
        thread.join(30)
        assert not thread.is_alive()
        assert states(tm, task_id) == [SubtaskState.RUNNING]
        assert tt.rec.runs[0].cause == "ContextCancelledError"
    else:
        wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED], what="row canceled")
        assert tt.rec.runs[0].cause == "CancelSubtaskError"
        assert thread.is_alive()  # the executor keeps looping after cancelling the subtask
        executor.cancel()
        thread.join(30)
    assert tm.get_subtask(tm.get_subtasks(task_id)[0].id).error is None


@pytest.mark.parametrize("to_state", ["reverting", "cancelling"])
def test_blocked_subtask_is_canceled_when_task_reverts_seen_in_sql(
    task_manager: TaskManager, make_param: Callable[..., Param], to_state: str
) -> None:
    """No Manager and no signal: the executor's own watcher reads the task state from SQL."""
    tm = task_manager
    tt = TestType("revert-sql")
    tt.block_on_ctx()
    task_id = plan_task(tm, "k", tt.name, ["n1", "n1"])
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: tt.rec.runs, what="subtask running")
    if to_state == "reverting":
        assert tm.start_reverting(task_id, TaskState.RUNNING, RuntimeError("boom"))
    else:
        assert tm.request_cancel(task_id)
    thread.join(30)
    assert not thread.is_alive()
    assert states(tm, task_id) == [SubtaskState.CANCELED, SubtaskState.PENDING]
    assert tt.rec.runs[0].cause == "CancelSubtaskError"
    assert len(tt.rec.runs) == 1  # no new subtask started while reverting


def test_blocked_subtask_stops_untouched_when_task_pauses_seen_in_sql(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = TestType("pause-sql")
    tt.block_on_ctx()
    task_id = plan_task(tm, "kp", tt.name, ["n1"])
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: tt.rec.runs, what="subtask running")
    assert tm.request_pause(task_id)
    thread.join(30)
    assert not thread.is_alive()
    assert states(tm, task_id) == [SubtaskState.RUNNING]
    assert tt.rec.runs[0].outcome == "cancelled"
    assert tt.rec.runs[0].cause != "CancelSubtaskError"


def test_manager_reverting_task_cancels_running_and_pending_subtasks(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("revert-mgr")
    tt.block_on_ctx()
    tt.register()
    cluster.add("n1")
    task_id = plan_task(tm, "kr", tt.name, ["n1", "n1", "n1"])
    wait_until(lambda: tt.rec.runs, what="subtask running")
    assert tm.start_reverting(task_id, TaskState.RUNNING, RuntimeError("boom"))
    wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED] * 3, what="all canceled")
    assert tt.rec.runs[0].cause == "CancelSubtaskError"
    assert len(tt.rec.runs) == 1


def test_manager_pausing_task_stops_executor_and_pauses_rows_then_resume_reruns(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("pause-mgr")
    tt.block_on_ctx()
    tt.register()
    mgr = cluster.add("n1")
    task_id = plan_task(tm, "kpm", tt.name, ["n1", "n1"])
    wait_until(lambda: tt.rec.runs, what="subtask running")
    assert tm.request_pause(task_id)
    wait_until(lambda: states(tm, task_id) == [SubtaskState.PAUSED] * 2, what="rows paused")
    wait_until(lambda: mgr.running_task_ids() == [], what="executor stopped")
    assert tt.rec.runs[0].outcome == "cancelled"
    assert tt.rec.runs[0].cause != "CancelSubtaskError"
    # play the scheduler: paused, then resumed
    assert tm.finish_pausing(task_id)
    assert tm.request_resume(task_id)
    tm.resume_subtasks(task_id)
    assert tm.finish_resuming(task_id)
    tt.release(1)
    tt.release(2)
    wait_until(lambda: step_done(tm, task_id, 1), what="resumed task done")
    assert [r.outcome for r in tt.rec.runs] == ["cancelled", "ok", "ok"]


def test_subtask_moved_to_another_node_mid_run_is_cancelled_untouched(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("moved")
    tt.block_on_ctx()
    tt.register()
    cluster.add("n1")
    task_id = plan_task(tm, "km", tt.name, ["n1"])
    wait_until(lambda: tt.rec.runs, what="subtask running on n1")
    (sub,) = tm.get_subtasks(task_id)
    moved = SubtaskBase(sub.id, task_id, 1, sub.type, SubtaskState.RUNNING, "n2", sub.ordinal)
    assert tm.update_subtasks_exec_ids([moved]) == 1
    wait_until(lambda: tt.rec.runs[0].outcome == "cancelled", what="n1 stops the moved subtask")
    assert tt.rec.runs[0].cause == "SubtaskMovedAwayError"
    row = tm.get_subtask(sub.id)
    assert (row.state, row.exec_id, row.error) == (SubtaskState.RUNNING, "n2", None)
    # n2 comes up and re-runs it (the type is idempotent)
    cluster.add("n2")
    tt.release(1)
    wait_until(lambda: step_done(tm, task_id, 1), what="n2 finishes it")
    assert [(r.exec_id, r.outcome) for r in tt.rec.runs] == [("n1", "cancelled"), ("n2", "ok")]


def test_task_modifying_state_keeps_the_executor_running(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("modifying")
    tt.block_on_ctx()
    tt.register()
    mgr = cluster.add("n1")
    task_id = plan_task(tm, "kmod", tt.name, ["n1"])
    wait_until(lambda: tt.rec.runs, what="subtask running")
    tm.modify_task_by_id(task_id, ModifyParam(TaskState.RUNNING, (Modification("modify_max_node_count", 2),)))
    assert tm.get_task_by_id(task_id).state == TaskState.MODIFYING
    tt.release(1)
    wait_until(lambda: step_done(tm, task_id, 1), what="finishes while modifying")
    assert tt.rec.runs[0].outcome == "ok"
    assert mgr.running_task_ids() in ([task_id], [])
