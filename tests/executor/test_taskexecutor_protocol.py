"""The executor's per-subtask protocol: no task read per subtask, one watcher thread per executor,
and task changes learnt from the claim's fingerprint between subtasks."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from helpers.executor import FAST, TestType, plan_task, start_executor, step_done
from helpers.waiting import wait_until

from dxf_celery.context import Context
from dxf_celery.proto import Modification, ModifyParam, Subtask, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Param

#: The watcher's periodic checks never come due in these tests: what they see, the loop saw.
QUIET = dataclasses.replace(FAST, watch_task=60.0, check_balance=60.0, update_summary=60.0, detect_modify=60.0)


class CountingTable:
    """The real TaskManager, counting full task reads."""

    def __init__(self, tm: TaskManager) -> None:
        self._tm = tm
        self.task_reads = 0

    def get_task_by_id(self, task_id: int) -> Any:
        self.task_reads += 1
        return self._tm.get_task_by_id(task_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tm, name)


def test_no_task_read_per_subtask(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    n = 30
    tt = TestType("no-read")
    task_id = plan_task(tm, "knr", tt.name, ["n1"] * n)
    table = CountingTable(tm)
    param = dataclasses.replace(make_param("n1", intervals=QUIET), task_table=table)  # type: ignore[arg-type]
    _, thread = start_executor(tm, tt, task_id, param)
    thread.join(60)
    assert not thread.is_alive()
    assert step_done(tm, task_id, 1) and len(tt.rec.ok_runs()) == n
    # One read when the executor starts, one per idle poll before it exits; none per subtask.
    assert table.task_reads <= QUIET.max_idle_polls + 2 < n


def test_one_watcher_thread_per_executor(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = TestType("one-watcher")
    seen: list[set[tuple[int | None, str]]] = []

    def behaviour(ctx: Context, st: Subtask) -> None:
        seen.append({(t.ident, t.name) for t in threading.enumerate() if t.name.startswith("dxf-watch")})

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kow", tt.name, ["n1"] * 10)
    _, thread = start_executor(tm, tt, task_id, make_param("n1"))
    thread.join(60)
    assert not thread.is_alive()
    assert len(seen) == 10
    watchers = set().union(*seen)
    assert len(watchers) == 1, watchers  # the same thread watched every subtask
    assert not any(t.name.startswith("dxf-watch") for t in threading.enumerate()), "the watcher outlived its executor"


def test_concurrency_change_between_subtasks_is_seen_through_the_claim(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    """The watcher never looks (QUIET); the next claim's fingerprint shows the task changed,
    so the executor reads it and takes the new slots before running the claimed subtask."""
    tm = task_manager
    tt = TestType("fingerprint")
    tt.block_on_ctx()
    task_id = plan_task(tm, "kfp", tt.name, ["n1", "n1"], concurrency=1)
    param = make_param("n1", slots=4, intervals=dataclasses.replace(QUIET, max_idle_polls=10_000))
    executor, thread = start_executor(tm, tt, task_id, param)
    try:
        wait_until(lambda: tt.rec.runs, what="first subtask running")
        task = tm.get_task_by_id(task_id)
        tm.modify_task_by_id(task_id, ModifyParam(task.state, (Modification("modify_concurrency", 2),)))
        assert tm.finish_modifying(dataclasses.replace(tm.get_task_by_id(task_id), concurrency=2))
        assert tm.get_task_by_id(task_id).state == TaskState.RUNNING
        assert param.slot_manager.slots_of(task_id) == 1  # nobody looked yet
        tt.release(1)
        wait_until(lambda: len(tt.rec.runs) == 2, what="second subtask running")
        assert param.slot_manager.slots_of(task_id) == 2
        assert executor.task.concurrency == 2
        tt.release(2)
        wait_until(lambda: step_done(tm, task_id, 1), what="step done")
    finally:
        executor.cancel()
        thread.join(30)
