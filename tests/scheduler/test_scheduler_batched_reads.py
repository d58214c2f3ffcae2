"""The pass reads every scheduled task's base and step counts in two statements; those reads
must never let a scheduler act on counts older than the task state it acts on."""

from __future__ import annotations

import pytest
from helpers.cluster_types import TASK_TYPE, demo_meta
from helpers.scheduling import manager, nodes, passes, run_step, state

from dxf_celery import handle
from dxf_celery.proto import ExtraParams, SubtaskState, TaskState
from dxf_celery.storage import TaskManager

pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py


def test_steady_state_pass_counts_all_tasks_in_one_statement(
    task_manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2", cpu=16)
    m = manager(tm)
    tasks = [handle.submit_task(tm, f"k{i}", TASK_TYPE, meta=demo_meta(steps=2, subtasks=2)) for i in range(20)]
    passes(m, 2)
    assert {state(tm, t.id) for t in tasks} == {TaskState.RUNNING}
    calls = {"per_task_counts": 0, "per_task_bases": 0, "batched": 0}

    def count(name: str, real: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real(*args, **kwargs)  # type: ignore[operator]

        return wrapper

    monkeypatch.setattr(
        tm, "get_subtask_cnt_group_by_states", count("per_task_counts", tm.get_subtask_cnt_group_by_states)
    )
    monkeypatch.setattr(tm, "get_task_base_by_id", count("per_task_bases", tm.get_task_base_by_id))
    monkeypatch.setattr(tm, "get_step_counts", count("batched", tm.get_step_counts))
    passes(m, 3)
    assert calls == {"per_task_counts": 0, "per_task_bases": 0, "batched": 3}
    for t in tasks[:5]:
        run_step(tm, t.id, 1)
    passes(m)
    assert [handle.get_task(tm, t.id).step for t in tasks[:6]] == [2, 2, 2, 2, 2, 1]


def test_a_state_change_between_the_batched_reads_and_the_scheduler_is_not_acted_on_stale(
    task_manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolve lands after the pass counted a failed subtask: the step must not be taken as done."""
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    task = handle.submit_task(
        tm, "k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=2), extra_params=ExtraParams(manual_recovery=True)
    )
    passes(m)
    first, second = tm.get_subtasks(task.id, 1)
    tm.start_subtask(first.id, "n1")
    tm.finish_subtask("n1", first.id, first.meta)
    tm.start_subtask(second.id, "n1")
    tm.update_subtask_state_and_error("n1", second.id, SubtaskState.FAILED, ValueError("bad row"))
    passes(m)
    assert state(tm, task.id) == TaskState.AWAITING_RESOLUTION
    real = tm.get_step_counts

    def counts_then_resolve(steps: dict[int, int]) -> object:
        out = real(steps)
        assert handle.resolve_task(tm, task.id)  # an operator resolves right after the pass counted
        return out

    monkeypatch.setattr(tm, "get_step_counts", counts_then_resolve)
    passes(m)
    monkeypatch.setattr(tm, "get_step_counts", real)
    passes(m, 2)
    t = handle.get_task(tm, task.id)
    assert (t.state, t.step) == (TaskState.RUNNING, 1)  # the resolved subtask is pending again
    assert [s.state for s in tm.get_subtasks(task.id, 1)] == [SubtaskState.SUCCEED, SubtaskState.PENDING]
