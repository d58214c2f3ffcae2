"""Subtask checkpoints end to end: a step saves how far it got, is interrupted, and the re-run
resumes from the checkpoint (LocalCluster, real executors, every database).

The step walks items 0..ITEMS-1 and saves ``{"next": i + 1}`` after each one. Two real
interruptions: a pause (the executor cancels the subtask; resume gives it back as pending)
and a retryable error (the row stays running and the idempotent subtask runs again).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from helpers.waiting import wait_until

from dxf_celery.context import Context
from dxf_celery.errors import DXFError
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, SubtaskState, Task, TaskBase, TaskState
from dxf_celery.scheduler import BaseScheduler, TaskHandle
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.scheduler.register import register_scheduler_factory
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, StepExecutor
from dxf_celery.taskexecutor.interfaces import Extension as ExecutorExtension
from dxf_celery.taskexecutor.param import Param as ExecutorParam
from dxf_celery.taskexecutor.register import register_task_type
from dxf_celery.testing import LocalCluster

TASK_TYPE = "checkpoint-test"
ITEMS = 10
STOP_AT = 4  # the first run stops after saving {"next": STOP_AT}


class Hiccup(DXFError):
    """A retryable error: the executor keeps the subtask running and runs it again."""


@dataclass
class Journal:
    """What the runs did, across the cluster's threads."""

    how: str = "pause"  # "pause": block until cancelled; "retry": raise Hiccup
    items: list[int] = field(default_factory=list)
    starts: list[object] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


JOURNAL = Journal()


class CheckpointStep(BaseStepExecutor):
    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        saved = self.load_checkpoint(subtask)
        with JOURNAL.lock:
            JOURNAL.starts.append(saved)
            first_run = len(JOURNAL.starts) == 1
        start = saved["next"] if saved else 0
        for i in range(start, ITEMS):
            ctx.check()
            with JOURNAL.lock:
                JOURNAL.items.append(i)
            assert self.save_checkpoint(subtask, {"next": i + 1})
            if first_run and i + 1 == STOP_AT:
                if JOURNAL.how == "retry":
                    raise Hiccup("interrupted after item 3; the re-run resumes from the checkpoint")
                ctx.wait(60)  # held open by state: the test pauses the task
                ctx.check()
                raise AssertionError("the pause never reached the subtask")
        subtask.meta = json.dumps({"resumed_from": start}).encode()


class CheckpointExecutorExtension(ExecutorExtension):
    def is_idempotent(self, subtask: Subtask) -> bool:
        return True

    def is_retryable_error(self, err: BaseException) -> bool:
        return isinstance(err, Hiccup)

    def get_step_executor(self, task: Task) -> StepExecutor:
        return CheckpointStep()


class OneStep(SchedulerExtension):
    def get_next_step(self, task: TaskBase) -> int:
        return 1 if task.step == STEP_INIT else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return [b"{}"]


def _executor(ctx: Context, task: Task, param: ExecutorParam) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, CheckpointExecutorExtension())


def _scheduler(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    return BaseScheduler(ctx, task, param, OneStep())


@pytest.fixture
def cluster(db_url: str) -> Iterator[LocalCluster]:
    global JOURNAL
    JOURNAL = Journal()
    register_task_type(TASK_TYPE, _executor)
    register_scheduler_factory(TASK_TYPE, _scheduler)
    with LocalCluster(db_url, nodes=1, slots=2) as c:
        yield c


def _checkpoint(cluster: LocalCluster, task_id: int) -> object:
    subs = cluster.task_manager.get_subtasks(task_id)
    return cluster.task_manager.get_subtask_checkpoint(subs[0].id) if subs else None


def _only_subtask(cluster: LocalCluster, task_id: int) -> tuple[int, SubtaskState]:
    (sub,) = cluster.task_manager.get_subtasks(task_id)
    return sub.id, sub.state


def test_paused_subtask_resumes_from_its_checkpoint(cluster: LocalCluster) -> None:
    tm = cluster.task_manager
    task = cluster.submit_task("ckpt-pause", TASK_TYPE)
    # The item is journaled before its checkpoint is saved: wait for the save too.
    wait_until(
        lambda: len(JOURNAL.items) == STOP_AT and _checkpoint(cluster, task.id) == {"next": STOP_AT},
        what="first run to reach the stop point",
    )
    sub_id, _ = _only_subtask(cluster, task.id)
    assert tm.get_subtask_checkpoint(sub_id) == {"next": STOP_AT}
    assert cluster.pause_task(task.id)
    assert cluster.wait_task(task.id, timeout=30).state == TaskState.PAUSED
    assert _only_subtask(cluster, task.id)[1] == SubtaskState.PAUSED
    assert tm.get_subtask_checkpoint(sub_id) == {"next": STOP_AT}  # pausing keeps it
    assert cluster.resume_task(task.id)
    done = cluster.wait_task(task.id, timeout=30)
    assert done.state == TaskState.SUCCEED
    assert JOURNAL.starts == [None, {"next": STOP_AT}]
    assert JOURNAL.items == list(range(ITEMS))  # every item once: nothing redone, nothing skipped
    (sub,) = tm.get_subtasks(task.id)
    assert json.loads(sub.meta) == {"resumed_from": STOP_AT}


def test_retried_subtask_resumes_from_its_checkpoint(cluster: LocalCluster) -> None:
    JOURNAL.how = "retry"
    tm = cluster.task_manager
    task = cluster.submit_task("ckpt-retry", TASK_TYPE)
    done = cluster.wait_task(task.id, timeout=30)
    assert done.state == TaskState.SUCCEED
    assert JOURNAL.starts == [None, {"next": STOP_AT}]
    assert JOURNAL.items == list(range(ITEMS))
    (sub,) = tm.get_subtasks(task.id)
    assert json.loads(sub.meta) == {"resumed_from": STOP_AT}


def test_a_node_that_lost_the_subtask_cannot_write_its_checkpoint(cluster: LocalCluster) -> None:
    """The store the framework hands the step is keyed by the subtask's exec_id."""
    tm = cluster.task_manager
    task = cluster.submit_task("ckpt-moved", TASK_TYPE)
    # The item is journaled before its checkpoint is saved: wait for the save too.
    wait_until(
        lambda: len(JOURNAL.items) == STOP_AT and _checkpoint(cluster, task.id) == {"next": STOP_AT},
        what="first run to reach the stop point",
    )
    sub = tm.get_subtasks(task.id)[0]
    step = CheckpointStep()
    step.set_checkpoint_store(tm)
    sub.exec_id = "some-other-node"
    assert step.save_checkpoint(sub, {"next": 999}) is False
    assert tm.get_subtask_checkpoint(sub.id) == {"next": STOP_AT}
    assert cluster.cancel_task(task.id)
    assert cluster.wait_task(task.id, timeout=30, raise_error=False).state == TaskState.REVERTED
