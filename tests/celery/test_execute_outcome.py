"""The DXF outcome of one ``dxf.execute``: why the executor ended, what it ran, and the Celery state for it.

In-process (no worker): the ``dxf.execute`` body (``run_execute``) on real SQL and real
threads, with a scheduler thread where the test needs the task to move on. The Flower end of
it (real workers, Flower's ``/api/tasks``) is in test_flower_e2e.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from helpers.celery_apps.harness import read_record
from helpers.celery_apps.types import TASK_TYPE, e2e_meta, executor_factory, scheduler_factory
from helpers.waiting import wait_until

from dxf_celery import DXF, TaskState
from dxf_celery.scheduler import register_scheduler_factory
from dxf_celery.scheduler.manager import Manager as SchedulerManager
from dxf_celery.taskexecutor import outcome as loop
from dxf_celery.taskexecutor import register_task_type
from dxf_celery.worker import events as progress
from dxf_celery.worker import outcome
from dxf_celery.worker.tasks import run_execute

S = TaskState


@pytest.mark.parametrize(
    ("kw", "ended"),
    [
        ({"loop_reason": loop.LOOP_IDLE, "task_state": S.SUCCEED}, outcome.FINISHED),
        ({"loop_reason": loop.LOOP_IDLE, "task_state": S.RUNNING}, outcome.IDLE),
        ({"loop_reason": loop.LOOP_IDLE, "task_state": S.RUNNING, "moved": 1}, outcome.MOVED),
        ({"loop_reason": loop.LOOP_CANCELLED, "task_state": S.PAUSING}, outcome.PAUSED),
        ({"loop_reason": loop.LOOP_CANCELLED, "task_state": S.PAUSED}, outcome.PAUSED),
        ({"loop_reason": loop.LOOP_CANCELLED, "task_state": S.RUNNING}, outcome.PREEMPTED),
        ({"loop_reason": loop.LOOP_CANCELLED, "task_state": S.RUNNING, "shutting_down": True}, outcome.SHUTDOWN),
        ({"loop_reason": loop.LOOP_TASK_STATE, "loop_detail": "cancelling", "task_state": S.CANCELLING}, "cancelled"),
        ({"loop_reason": loop.LOOP_TASK_STATE, "task_state": S.REVERTED, "cancelled_by_user": True}, "cancelled"),
        ({"loop_reason": loop.LOOP_TASK_STATE, "loop_detail": "reverting", "task_state": S.REVERTED}, "reverted"),
        # The state the loop saw wins over a later read (paused, then resumed already).
        ({"loop_reason": loop.LOOP_TASK_STATE, "loop_detail": "pausing", "task_state": S.RUNNING}, "paused"),
        ({"loop_reason": loop.LOOP_NO_ROOM, "task_state": S.RUNNING}, outcome.NO_ROOM),
        ({"loop_reason": loop.LOOP_CRASHED, "task_state": S.RUNNING}, outcome.CRASHED),
        ({"loop_reason": loop.LOOP_CRASHED, "task_state": S.REVERTING}, outcome.REVERTED),
        ({"loop_reason": loop.LOOP_DRAINED, "task_state": S.RUNNING}, outcome.PREEMPTED),
        ({"loop_reason": loop.LOOP_DRAINED, "task_state": S.RUNNING, "shutting_down": True}, outcome.SHUTDOWN),
        ({"loop_reason": loop.LOOP_GONE, "task_state": None}, outcome.GONE),
        ({"built": False, "loop_reason": "", "task_state": S.RUNNING}, outcome.NOT_BUILT),
        ({"built": False, "loop_reason": "", "task_state": S.REVERTING}, outcome.REVERTED),
    ],
)
def test_classify_reads_the_loop_against_the_task_state(kw: dict[str, Any], ended: str) -> None:
    args: dict[str, Any] = {"built": True, "loop_detail": "", "moved": 0, **kw}
    assert outcome.classify(**args) == ended


def test_only_a_finished_or_idle_executor_is_a_celery_success() -> None:
    assert {e for e in (outcome.FINISHED, outcome.IDLE, outcome.SKIPPED) if outcome.celery_state(e) == "SUCCESS"} == {
        outcome.FINISHED,
        outcome.IDLE,
        outcome.SKIPPED,
    }
    for ended in ("paused", "cancelled", "reverted", "preempted", "moved", "shutdown", "crashed", "not_built"):
        assert outcome.celery_state(ended) == ended.upper()


# ---------------------------------------------------------------------- the body, in process


@pytest.fixture
def local_dxf(tmp_path: Path) -> Iterator[DXF]:
    app = Celery("outcome", broker="memory://", set_as_current=False)
    app.conf.update(
        dxf_database_url=f"sqlite:///{tmp_path / 'dxf.db'}",
        dxf_cancel_grace=0.3,
        dxf_subtask_check_interval=0.05,
        # A long idle window: the executor is still polling when the scheduler thread ends the
        # task, so it sees the end instead of giving up first.
        dxf_max_subtask_check_interval=2.0,
        dxf_watch_task_interval=0.05,
        dxf_progress_event_interval=0.02,  # many progress looks per subtask
    )
    register_task_type(TASK_TYPE, executor_factory)
    register_scheduler_factory(TASK_TYPE, scheduler_factory)
    dxf = DXF(app)
    dxf.task_manager.init_meta("n1", "", 2)
    yield dxf
    dxf.state.dispose()


class SchedulerThread:
    """Scheduler passes in a loop, as beat would tick them."""

    def __init__(self, dxf: DXF) -> None:
        self.manager = SchedulerManager(dxf.task_manager, owner_id="test", intervals=dxf.state.scheduler_intervals())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.02):
            self.manager.schedule_once()

    def __enter__(self) -> SchedulerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.manager.release()


def _execute(dxf: DXF, task_id: int, **kw: Any) -> dict[str, Any]:
    return run_execute(
        dxf.state, celery_id="cid", hostname="n1", task_id=task_id, exec_id="n1", slots=2, memory=0, events=False, **kw
    )


def _wait_running(dxf: DXF, task_id: int) -> None:
    wait_until(lambda: dxf.get_task(task_id).state == TaskState.RUNNING, 30, what="the task to be planned")


def test_one_executor_runs_both_steps_and_says_finished(local_dxf: DXF, tmp_path: Path) -> None:
    task = local_dxf.submit_task("two", TASK_TYPE, meta=e2e_meta(str(tmp_path / "runs.log"), steps=2, subtasks=3))
    with SchedulerThread(local_dxf):
        _wait_running(local_dxf, task.id)
        result = _execute(local_dxf, task.id)
    assert result["ended"] == outcome.FINISHED and result["task_state"] == "succeed"
    assert result["steps"] == [1, 2]
    assert result["subtasks_by_step"] == {"1": 3, "2": 3} and result["subtasks"] == 6
    assert result["subtask_ends"] == {"succeed": 6}
    assert (result["key"], result["type"], result["node"]) == ("two", TASK_TYPE, "n1")
    assert "step" not in result  # no step frozen at launch


def test_a_paused_task_ends_its_executor_paused(local_dxf: DXF, tmp_path: Path) -> None:
    record = tmp_path / "runs.log"
    task = local_dxf.submit_task(
        "p", TASK_TYPE, meta=e2e_meta(str(record), steps=1, subtasks=2, hold=tmp_path / "never")
    )
    _plan_once(local_dxf)
    results: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: results.append(_execute(local_dxf, task.id)), daemon=True)
    runner.start()
    wait_until(lambda: any(e.kind == "start" for e in read_record(record)), 30, what="a held subtask")
    assert local_dxf.pause_task(task.id)
    runner.join(60)
    assert not runner.is_alive()
    (result,) = results
    assert result["ended"] == outcome.PAUSED, result
    assert outcome.celery_state(result["ended"]) == "PAUSED"
    # It ran step 1 and finished nothing: the held subtask is left for the resume.
    assert result["steps"] == [1] and result["subtasks"] == 0
    assert result["subtask_ends"] == {"left": 1}


def test_a_cancelled_task_ends_its_executor_cancelled(local_dxf: DXF, tmp_path: Path) -> None:
    record = tmp_path / "runs.log"
    task = local_dxf.submit_task(
        "c", TASK_TYPE, meta=e2e_meta(str(record), steps=1, subtasks=2, hold=tmp_path / "never")
    )
    _plan_once(local_dxf)
    results: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: results.append(_execute(local_dxf, task.id)), daemon=True)
    runner.start()
    wait_until(lambda: any(e.kind == "start" for e in read_record(record)), 30, what="a held subtask")
    assert local_dxf.cancel_task(task.id)
    runner.join(60)
    assert not runner.is_alive()
    (result,) = results
    assert result["ended"] == outcome.CANCELLED, result
    assert result["subtasks"] == 0 and result["subtask_ends"] == {"canceled": 1}


def _plan_once(dxf: DXF) -> None:
    sched = SchedulerManager(dxf.task_manager, owner_id="test", intervals=dxf.state.scheduler_intervals())
    try:
        sched.schedule_once()
    finally:
        sched.release()


def test_progress_reaches_the_result_backend_boundedly_while_the_executor_runs(
    local_dxf: DXF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PROGRESS`` is stored with the step's figures, never more often than the bound allows."""
    monkeypatch.setattr(progress, "MIN_STORE_INTERVAL", 3600.0)  # one write per hour at most: exactly one here
    record = tmp_path / "runs.log"
    task = local_dxf.submit_task("prog", TASK_TYPE, meta=e2e_meta(str(record), steps=1, subtasks=3, sleep=0.2))
    _plan_once(local_dxf)
    stored: list[tuple[str, dict[str, Any]]] = []
    result = _execute(local_dxf, task.id, store_state=lambda state, meta: stored.append((state, meta)))
    assert result["subtasks"] == 3
    assert len(stored) == 1, stored  # many reporter ticks, figures changing, one write
    state, meta = stored[0]
    assert state == "PROGRESS"
    assert (meta["task"], meta["key"], meta["node"], meta["step"]) == (task.id, "prog", "n1", 1)
    assert (meta["step_index"], meta["step_count"], meta["subtasks_total"]) == (1, 1, 3)
    assert 0 <= meta["subtasks_done"] <= 3
