"""Submit in one transaction of two statements: checks in one SELECT, then INSERT .. RETURNING.

The checks (concurrency against the nodes' CPU, a key used in history, a live duplicate), the
task handed back (no re-read) and what the submitter is told about the node table, on SQLite,
PostgreSQL and MariaDB.
"""

from __future__ import annotations

import logging

import pytest
from helpers.storage import force_task

from dxf_celery import handle
from dxf_celery.errors import InvalidTaskError, TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.proto import ExtraParams, TaskState
from dxf_celery.storage import TaskManager


def test_submit_returns_the_stored_task_and_the_node_table(task_manager: TaskManager) -> None:
    tm = task_manager
    params = ExtraParams(manual_recovery=True, max_runtime_slots=2)
    created = tm.submit_new_task("k", "t", 3, target_scope="gpu", extra_params=params, meta=b"\x00\xff")
    assert created.nodes == []
    stored = tm.get_task_by_id(created.task.id)
    assert created.task == stored
    assert (stored.meta, stored.extra_params, stored.state) == (b"\x00\xff", params, TaskState.PENDING)
    tm.init_meta("n1", "cpu", cpu_count=4)
    tm.init_meta("n2", "gpu", cpu_count=4)
    created = tm.submit_new_task("k2", "t", 1, target_scope="gpu")
    assert [(n.id, n.role, n.cpu_count) for n in created.nodes] == [("n1", "cpu", 4), ("n2", "gpu", 4)]


def test_submit_refusals(task_manager: TaskManager) -> None:
    tm = task_manager
    tm.init_meta("n1", "", cpu_count=4)
    with pytest.raises(InvalidTaskError, match="larger than the CPU slots"):
        tm.submit_new_task("big", "t", 5)
    with pytest.raises(TaskNotFoundError):
        tm.get_task_by_key("big")
    first = tm.submit_new_task("dup", "t", 1).task
    with pytest.raises(TaskAlreadyExistsError, match="exists already"):
        tm.submit_new_task("dup", "t", 1)
    force_task(tm, first.id, state=TaskState.SUCCEED)
    assert tm.transfer_tasks_to_history([tm.get_task_by_id(first.id)]) == 1
    with pytest.raises(TaskAlreadyExistsError, match="in history"):
        tm.submit_new_task("dup", "t", 1)
    # Both checks at once: the CPU check speaks first, as before.
    with pytest.raises(InvalidTaskError):
        tm.submit_new_task("dup", "t", 5)


def test_submit_warns_when_no_node_can_run_it(task_manager: TaskManager, caplog: pytest.LogCaptureFixture) -> None:
    tm = task_manager
    with caplog.at_level(logging.WARNING, logger="dxf_celery.handle"):
        handle.submit_task(tm, "a", "t")
        assert "no worker node is registered" in caplog.text
        caplog.clear()
        tm.init_meta("n1", "", cpu_count=4)
        handle.submit_task(tm, "b", "t", target_scope="gpu")
        assert "no node has the role 'gpu'" in caplog.text
        caplog.clear()
        handle.submit_task(tm, "c", "t")
        assert caplog.text == ""
