"""The client API on real databases: submit, look up, wait, and the answers for bad input."""

from __future__ import annotations

import threading

import pytest

from dxf_celery import handle
from dxf_celery.errors import (
    InvalidTaskError,
    TaskAlreadyExistsError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStateNotAllowedError,
)
from dxf_celery.proto import CANCELLED_BY_USER, NORMAL_PRIORITY, STEP_INIT, ExtraParams, TaskState
from dxf_celery.retry import run_with_retry
from dxf_celery.storage import TaskManager


def test_submit_and_get(task_manager: TaskManager) -> None:
    tm = task_manager
    task = handle.submit_task(
        tm,
        "k1",
        "any-type",
        meta=b'{"a": 1}',
        concurrency=2,
        target_scope="gpu",
        max_node_count=3,
        extra_params=ExtraParams(manual_recovery=True),
    )
    assert (task.key, task.type, task.state, task.step) == ("k1", "any-type", TaskState.PENDING, STEP_INIT)
    assert (task.concurrency, task.priority, task.target_scope, task.max_node_count) == (2, NORMAL_PRIORITY, "gpu", 3)
    assert task.extra_params.manual_recovery and task.meta == b'{"a": 1}'
    assert handle.get_task(tm, task.id).key == "k1"
    assert handle.get_task(tm, "k1").id == task.id
    with pytest.raises(TaskAlreadyExistsError):
        handle.submit_task(tm, "k1", "any-type")
    with pytest.raises(TaskNotFoundError, match="no task with key 'nope'"):
        handle.get_task(tm, "nope")
    with pytest.raises(TaskNotFoundError, match="no task with id 999"):
        handle.get_task(tm, 999)
    with pytest.raises(InvalidTaskError):
        handle.get_task(tm, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidTaskError):
        handle.submit_task(tm, "k2", "t", meta="not bytes")  # type: ignore[arg-type]


def test_history_keys_are_refused(task_manager: TaskManager) -> None:
    tm = task_manager
    task = handle.submit_task(tm, "k", "t")
    tm.fail(task.id, TaskState.PENDING, RuntimeError("x"))
    tm.transfer_tasks_to_history([tm.get_task_by_id(task.id)])
    assert handle.get_task(tm, "k").state == TaskState.FAILED  # found in history
    assert [t.key for t in handle.list_tasks(tm, states=[TaskState.FAILED])] == ["k"]
    with pytest.raises(TaskAlreadyExistsError, match="history"):
        handle.submit_task(tm, "k", "t")
    assert not handle.cancel_task(tm, "k")  # finished tasks are left alone


def test_wait_task(task_manager: TaskManager) -> None:
    tm = task_manager
    task = handle.submit_task(tm, "k", "t")
    with pytest.raises(TimeoutError, match="still pending"):
        handle.wait_task(tm, task.id, timeout=0.1, poll_interval=0.02)

    def finish() -> None:
        tm.request_cancel(task.id)
        tm.start_reverting(task.id, TaskState.CANCELLING, RuntimeError(CANCELLED_BY_USER))
        tm.finish_reverting(task.id)

    t = threading.Timer(0.1, finish)
    t.start()
    with pytest.raises(TaskFailedError, match="cancelled by user") as info:
        handle.wait_task(tm, task.id, timeout=30, poll_interval=0.02)
    t.join()
    assert info.value.task.state == TaskState.REVERTED
    assert handle.wait_task(tm, task.id, raise_error=False).state == TaskState.REVERTED
    with pytest.raises(TaskNotFoundError):
        handle.wait_task(tm, 12345, timeout=1)


def test_control_calls_on_missing_or_wrong_state(task_manager: TaskManager) -> None:
    tm = task_manager
    assert not handle.cancel_task(tm, "missing")
    assert not handle.pause_task(tm, "missing")
    assert not handle.resume_task(tm, 42)
    assert not handle.resolve_task(tm, "missing")
    task = handle.submit_task(tm, "k", "t")
    assert not handle.resume_task(tm, "k")  # not paused
    assert not handle.resolve_task(tm, "k")  # not awaiting resolution
    assert handle.pause_task(tm, task.id)
    with pytest.raises(TaskStateNotAllowedError, match="pausing"):
        handle.modify_task(tm, task.id, concurrency=2)
    with pytest.raises(TaskNotFoundError):
        handle.modify_task(tm, 999, concurrency=2)
    with pytest.raises(InvalidTaskError, match="max_node_count"):
        handle.modify_task(tm, task.id, max_node_count=-1)


def test_progress_of_unplanned_task(task_manager: TaskManager) -> None:
    task = handle.submit_task(task_manager, "k", "t")
    progress = handle.get_task_progress(task_manager, task.id)
    assert progress.task.id == task.id and progress.steps == {}
    assert progress.to_dict()["state"] == "pending"


def test_run_with_retry_is_reexported() -> None:
    assert handle.run_with_retry is run_with_retry
