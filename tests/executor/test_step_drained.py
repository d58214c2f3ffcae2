"""``Param.on_step_drained``: the executor says when it ran a step's subtasks and found none left for its node.

The Celery side turns that into the ``step-done`` wake-up of the scheduler lease holder
(tests/celery/test_wake_holder.py); here the hook's calls are pinned on every database: once
per drained run, with the task it last read, and never for an executor that ran nothing.
"""

from __future__ import annotations

from dataclasses import replace

from dxf_celery.context import Context
from dxf_celery.proto import NodeResource, Subtask, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Extension, Intervals, Param, SlotManager

NODE = "drain-node"


class _Noop(Extension):
    def get_step_executor(self, task: Task) -> BaseStepExecutor:
        return BaseStepExecutor()


def _run(tm: TaskManager, task_id: int) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    task = tm.get_task_by_id(task_id)
    slots = SlotManager(2)
    assert slots.alloc(task)
    intervals = replace(Intervals.fast(), max_idle_polls=2)
    param = Param(
        tm, slots, NodeResource(2, 1 << 30), NODE, intervals, on_step_drained=lambda t: calls.append((t.id, t.step))
    )
    BaseTaskExecutor(Context.background(), task, param, _Noop()).run()
    return calls


def _planned(tm: TaskManager, key: str, n: int, exec_id: str = NODE) -> int:
    task_id = tm.create_task(key, "drain", 1)
    subtasks = [Subtask(0, task_id, 1, "drain", SubtaskState.PENDING, exec_id, i + 1, meta=b"{}") for i in range(n)]
    assert tm.switch_task_step(tm.get_task_by_id(task_id), TaskState.RUNNING, 1, subtasks)
    return task_id


def test_hook_called_once_after_the_nodes_last_subtask(task_manager: TaskManager) -> None:
    task_manager.init_meta(NODE, "", 2)
    task_id = _planned(task_manager, "drained", 3)
    assert _run(task_manager, task_id) == [(task_id, 1)]
    counts = task_manager.get_subtask_cnt_group_by_states(task_id, 1)
    assert counts == {SubtaskState.SUCCEED: 3}


def test_hook_not_called_when_the_executor_ran_nothing(task_manager: TaskManager) -> None:
    task_manager.init_meta(NODE, "", 2)
    task_manager.init_meta("other-node", "", 2)
    task_id = _planned(task_manager, "elsewhere", 2, exec_id="other-node")
    assert _run(task_manager, task_id) == []


def test_an_executor_that_woke_the_scheduler_looks_again_soon(task_manager: TaskManager) -> None:
    """After the hook says it woke the scheduler, the next look comes after ``step_done_check``,
    not ``subtask_check``: with an hour as ``subtask_check`` only that quick look can find the
    next step the "scheduler" (the hook itself here) planned, and then see the task's end."""
    tm = task_manager
    tm.init_meta(NODE, "", 2)
    task_id = _planned(tm, "quick", 1)
    calls: list[int] = []

    def scheduler_pass(task: Task) -> bool:
        calls.append(task.step)
        current = tm.get_task_by_id(task_id)
        if current.step == 1:
            nxt = [Subtask(0, task_id, 2, "drain", SubtaskState.PENDING, NODE, 1, meta=b"{}")]
            assert tm.switch_task_step(current, TaskState.RUNNING, 2, nxt)
        else:
            assert tm.succeed(task_id)
        return True  # "woke the scheduler"

    task = tm.get_task_by_id(task_id)
    slots = SlotManager(2)
    assert slots.alloc(task)
    hour = 3600.0
    intervals = replace(Intervals.fast(), subtask_check=hour, max_subtask_check=hour, step_done_check=0.02)
    param = Param(tm, slots, NodeResource(2, 1 << 30), NODE, intervals, on_step_drained=scheduler_pass)
    BaseTaskExecutor(Context.background(), task, param, _Noop()).run()  # returns: it saw the task succeed
    assert calls == [1, 2]
    assert tm.get_subtask_cnt_group_by_states(task_id, 2) == {SubtaskState.SUCCEED: 1}
    assert tm.get_task_by_id(task_id).state == TaskState.SUCCEED
