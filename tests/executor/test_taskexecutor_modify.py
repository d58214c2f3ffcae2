"""Live concurrency and meta changes, idle exit, and the Manager's reconcile for out-of-process executors."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers.executor import FAST, Cluster, RecordingTaskExecutor, TestType, plan_task, states, step_done
from helpers.waiting import wait_until

from dxf_celery.context import Context
from dxf_celery.proto import Modification, ModifyParam, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Intervals, Manager, Param, SlotManager, run_executor
from dxf_celery.taskexecutor.launcher import RunningExecutor


def modify(tm: TaskManager, task_id: int, *, concurrency: int | None = None, meta: bytes | None = None) -> None:
    """Play the user (modify_task_by_id) and the scheduler (modified_task)."""
    task = tm.get_task_by_id(task_id)
    mods = [Modification("modify_concurrency", concurrency)] if concurrency is not None else []
    mods = mods or [Modification("modify_batch_size", 1)]
    tm.modify_task_by_id(task_id, ModifyParam(task.state, tuple(mods)))
    task = tm.get_task_by_id(task_id)
    task = dataclasses.replace(
        task,
        concurrency=concurrency if concurrency is not None else task.concurrency,
        meta=meta if meta is not None else task.meta,
    )
    assert tm.finish_modifying(task)
    assert tm.get_task_by_id(task_id).state == TaskState.RUNNING


def test_live_concurrency_grow_and_shrink_while_a_subtask_runs(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("live-slots")
    tt.live_resource = True
    tt.block_on_ctx()
    tt.register()
    mgr = cluster.add("n1", slots=4)
    task_id = plan_task(tm, "kl", tt.name, ["n1"], concurrency=2)
    wait_until(lambda: tt.rec.runs, what="running")
    assert mgr.slot_manager.slots_of(task_id) == 2
    modify(tm, task_id, concurrency=3)
    wait_until(lambda: (task_id, 3) in tt.rec.resources, what="resource_modified(3)")
    assert mgr.slot_manager.slots_of(task_id) == 3
    modify(tm, task_id, concurrency=1)
    wait_until(lambda: (task_id, 1) in tt.rec.resources, what="resource_modified(1)")
    assert mgr.slot_manager.slots_of(task_id) == 1
    assert mgr.slot_manager.used_slots() == 1
    assert tt.rec.runs[0].outcome == "running"  # applied live, the subtask never stopped
    tt.release(1)
    wait_until(lambda: step_done(tm, task_id, 1), what="done")


def test_executor_that_cannot_grow_is_stopped_and_resumes_later(cluster: Cluster) -> None:
    tm = cluster.tm
    tt, other = TestType("grow"), TestType("hog")
    tt.live_resource = True
    for t in (tt, other):
        t.block_on_ctx()
        t.register()
    mgr = cluster.add("n1", slots=4)
    task_id = plan_task(tm, "kg", tt.name, ["n1"], concurrency=1)
    wait_until(lambda: tt.rec.runs, what="running")
    hog = plan_task(tm, "hog", other.name, ["n1"], concurrency=3, priority=100)
    wait_until(lambda: other.rec.runs, what="hog running")
    modify(tm, task_id, concurrency=2)  # no room: 3 + 2 > 4
    wait_until(lambda: mgr.running_task_ids() == [hog], what="grown executor stopped")
    assert tt.rec.runs[0].outcome == "cancelled"
    assert states(tm, task_id) == [SubtaskState.RUNNING]  # row untouched
    other.release(1)
    tt.release(1)
    wait_until(lambda: step_done(tm, task_id, 1), what="re-run with 2 slots")
    assert [r.outcome for r in tt.rec.runs] == ["cancelled", "ok"]
    assert max(s[2] for s in tt.rec.spans) == 2


def test_run_loop_exits_when_growing_is_impossible(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = TestType("loop-grow")
    param = make_param("n1", slots=4, intervals=dataclasses.replace(FAST, max_idle_polls=10_000))
    task_id = plan_task(tm, "klg", tt.name, ["n1"], concurrency=2)
    task = tm.get_task_by_id(task_id)
    assert param.slot_manager.alloc(task)
    filler = dataclasses.replace(task.base(), id=task_id + 1000, concurrency=2)
    assert param.slot_manager.alloc(filler)
    executor = RecordingTaskExecutor(Context.background(), task, param, tt)
    thread = threading.Thread(target=executor.run, daemon=True)
    thread.start()
    wait_until(lambda: step_done(tm, task_id, 1), what="subtask done")
    assert thread.is_alive()  # idle-polling, not exiting yet
    modify(tm, task_id, concurrency=3)
    thread.join(30)
    assert not thread.is_alive()
    assert param.slot_manager.slots_of(task_id) == 2


def test_meta_change_applied_live(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("live-meta")
    tt.live_meta = True
    tt.block_on_ctx()
    tt.register()
    cluster.add("n1")
    task_id = plan_task(tm, "km", tt.name, ["n1"], meta=b'{"v": 1}')
    wait_until(lambda: tt.rec.runs, what="running")
    modify(tm, task_id, meta=b'{"v": 2}')
    wait_until(lambda: (task_id, b'{"v": 2}') in tt.rec.metas, what="task_meta_modified")
    assert tt.rec.runs[0].outcome == "running"
    tt.release(1)
    wait_until(lambda: step_done(tm, task_id, 1), what="done")
    assert [e for e in tt.rec.events if e[0] == "init"] == [("init", str(task_id), "1", '{"v": 1}')]


def test_meta_change_recreates_a_step_executor_that_cannot_apply_it(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("recreate")
    tt.block_on_ctx()
    tt.register()
    cluster.add("n1")
    task_id = plan_task(tm, "kre", tt.name, ["n1", "n1"], meta=b'{"v": 1}')
    wait_until(lambda: tt.rec.runs, what="running")
    modify(tm, task_id, meta=b'{"v": 2}')
    tt.release(1)
    tt.release(2)
    wait_until(lambda: step_done(tm, task_id, 1), what="done")
    tid = str(task_id)
    assert tt.rec.events[:3] == [
        ("init", tid, "1", '{"v": 1}'),
        ("cleanup", tid, "1"),
        ("init", tid, "1", '{"v": 2}'),
    ]
    assert [r.outcome for r in tt.rec.runs] == ["ok", "ok"]


class CountingTable:
    """The real TaskManager, counting empty polls of the executor loop."""

    def __init__(self, tm: TaskManager) -> None:
        self._tm = tm
        self.empty_polls = 0

    def get_first_subtask_in_states(self, *args: Any) -> Any:
        found = self._tm.get_first_subtask_in_states(*args)
        if found is None:
            self.empty_polls += 1
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tm, name)


def test_executor_exits_after_max_idle_polls(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = TestType("idle")
    param = make_param("n1")
    table = CountingTable(tm)
    param = dataclasses.replace(param, task_table=table)  # type: ignore[arg-type]
    task_id = plan_task(tm, "kidle", tt.name, ["n1"])
    task = tm.get_task_by_id(task_id)
    assert param.slot_manager.alloc(task)
    executor = RecordingTaskExecutor(Context.background(), task, param, tt)
    thread = threading.Thread(target=executor.run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert states(tm, task_id) == [SubtaskState.SUCCEED]
    assert table.empty_polls == FAST.max_idle_polls == 8
    assert [e[0] for e in tt.rec.events] == ["init", "cleanup"]


def test_manager_frees_slots_after_idle_exit_and_restarts_for_new_subtasks(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("idle-mgr")
    tt.register()
    mgr = cluster.add("n1")
    task_id = plan_task(tm, "kim", tt.name, ["n1"])
    wait_until(lambda: step_done(tm, task_id, 1), what="step 1")
    wait_until(lambda: mgr.running_task_ids() == [] and mgr.slot_manager.used_slots() == 0, what="idle exit")
    from helpers.executor import switch_step

    switch_step(tm, task_id, 2, ["n1"])
    wait_until(lambda: step_done(tm, task_id, 2), what="step 2 by a new executor")
    assert len(tt.rec.spans) == 2


# ---------------------------------------------------------------------- executor in "another process"


class DetachedHandle:
    """Like the Celery handle: the executor has its own context and private SlotManager."""

    def __init__(self, task: Task, param: Param) -> None:
        self.task_id = task.id
        self.ctx = Context.background()  # not a child of the Manager's: only cancel() reaches it
        self.thread = threading.Thread(target=run_executor, args=(self.ctx, task, param), daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        self.ctx.cancel()

    def cancel_running_subtask(self) -> None:
        pass  # no in-memory path: the executor derives it from SQL

    def done(self) -> bool:
        return not self.thread.is_alive()

    def close(self) -> None:
        pass


class DetachedLauncher:
    def launch(self, ctx: Context, task: Task, param: Param) -> RunningExecutor:
        private = SlotManager(param.node_resource.total_cpu)
        assert private.alloc(task)
        return DetachedHandle(task, dataclasses.replace(param, slot_manager=private))


def test_manager_reconciles_slots_of_an_out_of_process_executor(task_manager: TaskManager) -> None:
    from dxf_celery.proto import NodeResource
    from dxf_celery.taskexecutor import clear_task_executors

    tm = task_manager
    clear_task_executors()
    tt, hog = TestType("detached"), TestType("detached-hog")
    tt.live_resource = True
    for t in (tt, hog):
        t.block_on_ctx()
        t.register()
    mgr = Manager(Context.background(), tm, "n1", NodeResource(4, 4 << 30), intervals=FAST, launcher=DetachedLauncher())
    mgr.init_meta()
    mgr.start()
    try:
        task_id = plan_task(tm, "kd", tt.name, ["n1", "n1"], concurrency=1)
        wait_until(lambda: tt.rec.runs, what="running")
        modify(tm, task_id, concurrency=2)
        wait_until(lambda: mgr.slot_manager.slots_of(task_id) == 2, what="manager reconciled to 2")
        # reverting reaches the detached executor only through SQL
        hog_id = plan_task(tm, "kh", hog.name, ["n1"], concurrency=2, priority=100)
        wait_until(lambda: hog.rec.runs, what="hog running")
        modify(tm, task_id, concurrency=3)  # 2 + 3 > 4: the manager stops the executor
        wait_until(lambda: mgr.running_task_ids() == [hog_id], what="executor stopped by reconcile")
        assert tt.rec.runs[0].outcome == "cancelled"
        assert tm.start_reverting(hog_id, TaskState.RUNNING, RuntimeError("stop"))
        wait_until(lambda: states(tm, hog_id) == [SubtaskState.CANCELED], what="hog canceled via SQL")
        # The Manager cancels the row in SQL at once; the detached executor learns it from SQL
        # too (its task watch: reverting, or its balance check: the row is no longer running).
        wait_until(lambda: hog.rec.runs[0].outcome != "running", what="hog's subtask stopped")
        assert hog.rec.runs[0].cause in ("CancelSubtaskError", "SubtaskMovedAwayError"), hog.rec.runs[0]
        assert mgr.slot_manager.used_slots() <= 4
    finally:
        mgr.stop(timeout=30)
        clear_task_executors()


def test_intervals_validation() -> None:
    with pytest.raises(ValueError, match="watch_task"):
        Intervals(watch_task=0)
    assert Intervals().task_check == 0.3
    assert Intervals.fast().sql_retry_times == 5
