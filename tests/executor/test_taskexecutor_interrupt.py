"""Forced cancellation: step code that ignores its Context and swallows ``Exception`` is still stopped.

The executor marks step code explicitly (``taskexecutor.interrupt.step_code``) and, once a
subtask's Context has been cancelled for ``cancel_grace`` seconds, raises
``ExecutorCancelledError`` (a ``BaseException``) inside it. These tests use step code that
never looks at its Context and wraps its work in ``except Exception: pass``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from helpers.cluster_types import TIMEOUT, cluster_url
from helpers.executor import TestType, plan_task, start_executor, states
from helpers.waiting import wait_until

from dxf_celery.context import Context
from dxf_celery.errors import ExecutorCancelledError
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, SubtaskState, Task, TaskBase, TaskState
from dxf_celery.scheduler import BaseScheduler, TaskHandle, register_scheduler_factory
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import (
    BaseStepExecutor,
    BaseTaskExecutor,
    Extension,
    Param,
    StepExecutor,
    interrupt,
    register_task_type,
)
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture


def busy_work() -> int:
    return sum(i * i for i in range(2000))


class Swallower:
    """Step code that ignores its Context and eats every ``Exception``; records what stopped it."""

    def __init__(self, catch_cancel_once: bool = False) -> None:
        self.catch_cancel_once = catch_cancel_once
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.stopped_by: list[str] = []
        self.caught_cancel = 0

    def __call__(self, ctx: Context, subtask: Subtask) -> None:
        with self.lock:
            self.started.append(subtask.id)
        try:
            while True:
                try:
                    busy_work()
                    raise ValueError("a user error the loop ignores")
                except Exception:
                    pass
                except ExecutorCancelledError:
                    if not self.catch_cancel_once or self.caught_cancel:
                        raise
                    self.caught_cancel += 1  # step code that catches it by name and keeps going
        except BaseException as err:
            with self.lock:
                self.stopped_by.append(type(err).__name__)
            raise


# ---------------------------------------------------------------------- the mark itself


def test_interrupt_reaches_only_marked_step_code() -> None:
    ident: list[int] = []
    inside = threading.Event()
    leave = threading.Event()
    outcome: list[str] = []

    def runner() -> None:
        ident.append(threading.get_ident())
        try:
            with interrupt.step_code(7):
                inside.set()
                while True:
                    try:
                        busy_work()
                    except Exception:
                        pass
        except ExecutorCancelledError:
            outcome.append("interrupted")
        # Framework code after the mark: never interrupted.
        assert interrupt.running_subtask_id(threading.get_ident()) is None
        leave.wait(30)
        outcome.append("left")

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    assert inside.wait(30)
    assert interrupt.running_subtask_id(ident[0]) == 7
    assert not interrupt.interrupt(ident[0], 8), "another subtask's interruption must not land"
    assert interrupt.interrupt(ident[0], 7)
    wait_until(lambda: outcome == ["interrupted"], what="the step code to be interrupted")
    assert not interrupt.interrupt(ident[0], 7), "the mark is gone once the step code returned"
    leave.set()
    thread.join(30)
    assert outcome == ["interrupted", "left"]


def test_executor_cancelled_error_is_not_an_exception() -> None:
    assert issubclass(ExecutorCancelledError, BaseException)
    assert not issubclass(ExecutorCancelledError, Exception)


# ---------------------------------------------------------------------- BaseTaskExecutor in a thread


@pytest.mark.parametrize("how", ["cancel", "cancel_running_subtask"])
def test_step_code_swallowing_exception_is_stopped(
    task_manager: TaskManager, make_param: Callable[..., Param], how: str
) -> None:
    tm = task_manager
    tt = TestType(f"swallow-{how}")
    swallower = Swallower()
    tt.behaviour = swallower
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: swallower.started, what="the subtask to start")
    getattr(executor, how)()
    wait_until(lambda: swallower.stopped_by, what="the step code to be interrupted")
    assert swallower.stopped_by == ["ExecutorCancelledError"]
    if how == "cancel":
        thread.join(30)
        assert not thread.is_alive()
        # Cancel (pause, shutdown) leaves the row for a later run.
        assert states(tm, task_id) == [SubtaskState.RUNNING]
        assert tt.rec.runs[0].cause == "ContextCancelledError"
    else:
        wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED], what="row canceled")
        assert tt.rec.runs[0].cause == "CancelSubtaskError"
        assert thread.is_alive()  # the executor survives the interruption and keeps looping
        executor.cancel()
        thread.join(30)
        assert not thread.is_alive()
    assert tm.get_subtask(tm.get_subtasks(task_id)[0].id).error is None


def test_step_code_catching_the_interruption_is_interrupted_again(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = TestType("swallow-twice")
    swallower = Swallower(catch_cancel_once=True)
    tt.behaviour = swallower
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: swallower.started, what="the subtask to start")
    executor.cancel_running_subtask()
    wait_until(lambda: swallower.stopped_by, what="the second interruption")
    assert swallower.caught_cancel == 1
    assert swallower.stopped_by == ["ExecutorCancelledError"]
    wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED], what="row canceled")
    executor.cancel()
    thread.join(30)
    assert not thread.is_alive()


def test_step_code_that_stops_in_time_is_not_interrupted(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    """Cooperative step code returns on its cancelled Context and never sees the forced path."""
    tm = task_manager
    tt = TestType("cooperative")
    seen: list[str] = []

    def behaviour(ctx: Context, st: Subtask) -> None:
        try:
            ctx.wait(60)
            # Cleanup that takes less than the grace period, after the cancel.
            time.sleep(param.intervals.cancel_grace / 4)
            ctx.check()
        except BaseException as err:
            seen.append(type(err).__name__)
            raise

    tt.behaviour = behaviour
    param = make_param("n1")
    task_id = plan_task(tm, "k", tt.name, ["n1"])
    executor, thread = start_executor(tm, tt, task_id, param)
    wait_until(lambda: tt.rec.runs, what="the subtask to start")
    executor.cancel_running_subtask()
    wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED], what="row canceled")
    assert seen == ["CancelSubtaskError"]
    executor.cancel()
    thread.join(30)


# ---------------------------------------------------------------------- LocalCluster


SWALLOW_TYPE = "swallow-cluster"


class _StepExec(BaseStepExecutor):
    def __init__(self, swallower: Swallower) -> None:
        self.swallower = swallower

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        self.swallower(ctx, subtask)


class _ExecExt(Extension):
    def __init__(self, swallower: Swallower) -> None:
        self.swallower = swallower

    def get_step_executor(self, task: Task) -> StepExecutor:
        return _StepExec(self.swallower)


class _SchedExt(SchedulerExtension):
    def get_next_step(self, task: TaskBase) -> int:
        return 1 if task.step == STEP_INIT else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return [json.dumps({"n": i}).encode() for i in range(int(json.loads(task.meta)["subtasks"]))]


def test_local_cluster_cancel_stops_step_code_that_swallows_exception(cluster_url: str) -> None:
    swallower = Swallower()
    register_task_type(SWALLOW_TYPE, lambda ctx, task, param: BaseTaskExecutor(ctx, task, param, _ExecExt(swallower)))
    register_scheduler_factory(SWALLOW_TYPE, lambda ctx, task, param: BaseScheduler(ctx, task, param, _SchedExt()))
    with LocalCluster(cluster_url, nodes=2, slots=2) as cluster:
        task = cluster.submit_task("swallow", SWALLOW_TYPE, meta=json.dumps({"subtasks": 2}).encode())
        wait_until(lambda: len(swallower.started) == 2, what="both subtasks running")
        assert cluster.cancel_task(task.id)
        final = cluster.wait_task(task.id, timeout=TIMEOUT, raise_error=False)
        assert final.state == TaskState.REVERTED
        wait_until(lambda: len(swallower.stopped_by) == 2, what="both step codes interrupted")
        assert swallower.stopped_by == ["ExecutorCancelledError"] * 2
        assert {s.state for s in cluster.get_subtasks(task.id)} == {SubtaskState.CANCELED}
