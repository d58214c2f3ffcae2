"""Drain instead of abandon (issue 9): an executor asked to drain finishes its running subtask and claims no more.

Warm shutdown and preemption drain executors; past ``drain_grace`` the running subtask is
abandoned as ``running`` (DXF's behaviour). Step code that stops before doing anything says
so with ``SubtaskNotStartedError`` and its row goes back to ``pending``. A result is written
only while the row is still ``running`` on the node (a settled or moved row is not overwritten).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from helpers.executor import FAST, Cluster, TestType, plan_task, start_executor, states, step_done
from helpers.waiting import wait_until

from dxf_celery import SubtaskNotStartedError
from dxf_celery.context import Context
from dxf_celery.errors import NonIdempotentSubtaskError
from dxf_celery.proto import Subtask, SubtaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Param
from dxf_celery.taskexecutor.launcher import ThreadRunningExecutor


def test_drain_lets_the_running_subtask_finish_and_claims_no_more(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = TestType("drain-finish")
    tt.idempotent = False
    tt.block_on_ctx()
    task_id = plan_task(tm, "k", tt.name, ["n1", "n1", "n1"])
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: tt.rec.runs, what="first subtask running")
    executor.drain()
    executor.drain()  # a resent request changes nothing
    tt.release(1)
    thread.join(30)
    assert not thread.is_alive()
    assert states(tm, task_id) == [SubtaskState.SUCCEED, SubtaskState.PENDING, SubtaskState.PENDING]
    assert [r.outcome for r in tt.rec.runs] == ["ok"]


def test_drain_past_its_grace_abandons_the_subtask_as_running(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = TestType("drain-grace")
    tt.block_on_ctx()
    task_id = plan_task(tm, "k", tt.name, ["n1", "n1"])
    param = make_param("n1", intervals=dataclasses.replace(FAST, drain_grace=0.2))
    executor, thread = start_executor(tm, tt, task_id, param)
    wait_until(lambda: tt.rec.runs, what="first subtask running")
    executor.drain()  # never released: the grace runs out
    thread.join(30)
    assert not thread.is_alive()
    assert states(tm, task_id) == [SubtaskState.RUNNING, SubtaskState.PENDING]
    assert (tt.rec.runs[0].outcome, tt.rec.runs[0].cause) == ("cancelled", "DrainGraceExpiredError")


def test_zero_drain_grace_cancels_at_once(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = TestType("drain-zero")
    tt.block_on_ctx()
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    executor, thread = start_executor(
        tm, tt, task_id, make_param("n1", intervals=dataclasses.replace(FAST, drain_grace=0))
    )
    wait_until(lambda: tt.rec.runs, what="subtask running")
    executor.drain()
    thread.join(30)
    assert states(tm, task_id) == [SubtaskState.RUNNING]
    assert tt.rec.runs[0].cause == "DrainGraceExpiredError"


def _not_started_when_cancelled(tt: TestType) -> None:
    """Step code that waits for its go-ahead and, cancelled before it, says it did nothing."""

    def behaviour(ctx: Context, st: Subtask) -> None:
        gate = tt.gates.setdefault(st.ordinal, __import__("threading").Event())
        while not gate.is_set():
            if ctx.wait(0.005):
                raise SubtaskNotStartedError()

    tt.behaviour = behaviour


def test_subtask_not_started_goes_back_to_pending(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = TestType("not-started")
    tt.idempotent = False
    _not_started_when_cancelled(tt)
    task_id = plan_task(tm, "k", tt.name, ["n1", "n1"])
    param = make_param("n1", intervals=dataclasses.replace(FAST, drain_grace=0.1))
    executor, thread = start_executor(tm, tt, task_id, param)
    wait_until(lambda: tt.rec.runs, what="subtask running")
    executor.drain()
    thread.join(30)
    assert not thread.is_alive()
    assert states(tm, task_id) == [SubtaskState.PENDING, SubtaskState.PENDING]
    row = tm.get_subtasks(task_id)[0]
    assert row.exec_id == "n1" and row.error is None
    # a later executor runs it from the start, and the non-idempotent task does not revert
    tt.release(1)
    tt.release(2)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: step_done(tm, task_id, 1), what="both subtasks succeed")
    assert [r.outcome for r in tt.rec.runs] == ["cancelled", "ok", "ok"]
    _executor.cancel()
    thread.join(30)


def test_subtask_not_started_while_reverting_still_ends_canceled(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = TestType("not-started-revert")
    _not_started_when_cancelled(tt)
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: tt.rec.runs, what="subtask running")
    executor.cancel_running_subtask()
    wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED], what="row canceled")
    executor.cancel()
    thread.join(30)


def test_a_result_is_not_written_over_a_row_settled_meanwhile(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    """The scheduler settled the row (dead-node rule) while the step code ran on: its result is dropped."""
    tm = task_manager
    tt = TestType("settled")
    tt.block_on_ctx()
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    # The periodic balance check must not stop it first: only the finish is under test.
    param = make_param("n1", intervals=dataclasses.replace(FAST, check_balance=3600.0))
    executor, thread = start_executor(tm, tt, task_id, param)
    wait_until(lambda: tt.rec.runs, what="subtask running")
    (sub,) = tm.get_subtasks(task_id)
    tm.update_subtask_state_and_error("n1", sub.id, SubtaskState.FAILED, NonIdempotentSubtaskError())
    tt.release(1)
    wait_until(lambda: tt.rec.runs[0].outcome == "ok", what="step code returns")
    executor.cancel()
    thread.join(30)
    row = tm.get_subtask(sub.id)
    assert row.state == SubtaskState.FAILED, row


def test_preemption_drains_the_victim_at_a_subtask_boundary(cluster: Cluster) -> None:
    """A priority-1 task on a full node: the running non-idempotent task finishes its subtask, then yields."""
    tm = cluster.tm
    low, high = TestType("preempt-low"), TestType("preempt-high")
    low.idempotent = False
    low.block_on_ctx()
    for t in (low, high):
        t.register()
    mgr = cluster.add("n1", slots=1)
    low_id = plan_task(tm, "low", low.name, ["n1", "n1"])
    wait_until(lambda: low.rec.runs, what="low's first subtask running")
    high_id = plan_task(tm, "high", high.name, ["n1"], priority=1)
    # the drain is under way: low's executor is still there, its subtask still running
    running = mgr.running_executor(low_id)
    assert isinstance(running, ThreadRunningExecutor)
    wait_until(lambda: running.executor.drain_state.requested, what="low's executor draining")  # type: ignore[attr-defined]
    assert not high.rec.runs
    low.release(1)
    wait_until(lambda: step_done(tm, high_id, 1), what="high runs once low yielded")
    low.release(2)
    wait_until(lambda: step_done(tm, low_id, 1), what="low resumes and finishes")
    assert [r.outcome for r in low.rec.runs] == ["ok", "ok"]
    assert sorted(r.subtask_id for r in low.rec.runs) == sorted(s.id for s in tm.get_subtasks(low_id))
