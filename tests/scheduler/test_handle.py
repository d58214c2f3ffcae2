"""The client API on real databases: submit, look up, wait, and the answers for bad input."""

from __future__ import annotations

import threading

import pytest
from helpers.cluster_types import TASK_TYPE, TIMEOUT, cluster_url
from helpers.waiting import wait_until

from dxf_celery import handle, taskexecutor
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
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture


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


# ---------------------------------------------------------------------- waiting for a task type


def test_waiting_reason_when_no_live_worker_registered_the_type(
    task_manager: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    tm = task_manager
    tm.init_meta("n1", "", 4, task_types=["noop"])
    tm.init_meta("n2", "", 4, task_types=[])
    with caplog.at_level("WARNING", logger="dxf_celery.handle"):
        task = handle.submit_task(tm, "k1", "report")
    reason = "no live worker registered the task type 'report': start workers that import the module registering it"
    assert reason in caplog.text and f"task {task.id} (k1) accepted, but" in caplog.text
    assert (handle.waiting_reason(tm, task) or "").startswith(reason)
    caplog.clear()
    with caplog.at_level("WARNING", logger="dxf_celery.handle"):
        handle.submit_task(tm, "k2", "noop")  # n1 has it
    assert caplog.text == ""
    tm.init_meta("n3", "", 4)  # a node of an older version: its types are unknown, so no guess
    assert handle.waiting_reason(tm, task) is None
    tm.delete_node("n3")
    assert handle.waiting_reason(tm, task) is not None
    tm.recover_meta("n2", "", 4, task_types=["report"])  # imported later, reported at the next recover_meta
    assert handle.waiting_reason(tm, task) is None
    tm.request_pause(task.id)
    tm.recover_meta("n2", "", 4, task_types=[])
    assert handle.waiting_reason(tm, tm.get_task_by_id(task.id)) is None  # only pending tasks wait


def test_the_type_must_be_on_a_node_that_may_run_the_task(task_manager: TaskManager) -> None:
    """Executors run only on the nodes of the task's scope: a type registered elsewhere does not count."""
    tm = task_manager
    tm.init_meta("gpu@a", "gpu", 4, task_types=["render"])
    tm.init_meta("plain@b", "", 4, task_types=["noop"])
    anywhere = handle.submit_task(tm, "any", "render")
    assert (handle.waiting_reason(tm, anywhere) or "").startswith(
        "no live worker that may run it (role '') registered the task type 'render'"
    )
    assert handle.waiting_reason(tm, handle.submit_task(tm, "on-gpu", "render", target_scope="gpu")) is None
    on_gpu_noop = handle.submit_task(tm, "gpu-noop", "noop", target_scope="gpu")
    assert "(role 'gpu') registered the task type 'noop'" in (handle.waiting_reason(tm, on_gpu_noop) or "")
    tm.init_meta("bg@c", "background", 4, task_types=["render"])  # background nodes serve scope ""
    assert handle.waiting_reason(tm, anywhere) is None


# ---------------------------------------------------------------------- text the drivers cannot encode


@pytest.mark.parametrize("bad", ["\ud800", "key-\udcff"])  # a lone surrogate; a bad argv byte (surrogateescape)
def test_unencodable_text_is_an_invalid_task_error(task_manager: TaskManager, bad: str) -> None:
    tm = task_manager
    handle.submit_task(tm, "fine", "t")
    calls = {
        "key": lambda: handle.submit_task(tm, bad, "t"),
        "type": lambda: handle.submit_task(tm, "k-type", bad),
        "scope": lambda: handle.submit_task(tm, "k-scope", "t", target_scope=bad),
        "get": lambda: handle.get_task(tm, bad),
        "cancel": lambda: handle.cancel_task(tm, bad),
        "pause": lambda: handle.pause_task(tm, bad),
        "resume": lambda: handle.resume_task(tm, bad),
        "resolve": lambda: handle.resolve_task(tm, bad),
    }
    for what, call in calls.items():
        with pytest.raises(InvalidTaskError, match="lone surrogate") as info:
            call()
        message = str(info.value)
        assert len(message.splitlines()) == 1, what
        message.encode("utf-8")  # printable anywhere: the surrogate is escaped, not embedded
        assert ascii(bad[-1]).strip("'") in message, (what, message)
    assert [t.key for t in handle.list_tasks(tm)] == ["fine"]  # nothing was created


def test_cluster_nodes_report_the_types_they_registered(cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The node Manager writes the process's ``register_task_type`` names, and refreshes them."""
    with LocalCluster(cluster_url, nodes=1, slots=2, check_interval=0.02) as cluster:
        tm = cluster.task_manager
        assert [n.task_types for n in tm.get_all_nodes()] == [(TASK_TYPE,)]
        with caplog.at_level("WARNING", logger="dxf_celery.handle"):
            task = cluster.submit_task("nosuch-1", "nosuch")
        assert "no live worker registered the task type 'nosuch'" in caplog.text
        final = cluster.wait_task(task.id, timeout=TIMEOUT, raise_error=False)
        assert final.state == TaskState.FAILED and final.error is not None
        assert final.error.type_name == "UnknownTaskTypeError"
        factory = taskexecutor.get_task_executor_factory(TASK_TYPE)
        assert factory is not None
        taskexecutor.register_task_type("late", factory)  # imported after the node started
        wait_until(
            lambda: tm.get_all_nodes()[0].task_types == tuple(sorted((TASK_TYPE, "late"))),
            TIMEOUT,
            what="recover_meta to report the late type",
        )
