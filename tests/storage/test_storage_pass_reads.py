"""The batched reads of one scheduler pass, on every database: bases of many tasks at once and
the counts of each task's current step in one aggregate (IN lists chunked past 500 ids)."""

from __future__ import annotations

from helpers.storage import force_subtask, new_task, plan, running_task

from dxf_celery.proto import SubtaskState, TaskState
from dxf_celery.storage import TaskManager


def test_task_bases_by_ids(task_manager: TaskManager) -> None:
    tm = task_manager
    a = running_task(tm, "a")
    b = new_task(tm, "b", concurrency=1, priority=3)
    bases = tm.get_task_bases_by_ids([a.id, b.id, 999_999])
    assert set(bases) == {a.id, b.id}  # a missing id: not live
    assert (bases[a.id].state, bases[a.id].step) == (TaskState.RUNNING, 1)
    assert (bases[b.id].key, bases[b.id].priority) == ("b", 3)
    assert tm.get_task_bases_by_ids([]) == {}


def test_step_counts_only_count_the_asked_step(task_manager: TaskManager) -> None:
    tm = task_manager
    a = running_task(tm, "a", n=3)
    subs = tm.get_subtasks(a.id, 1)
    for s in subs:
        force_subtask(tm, s.id, state=SubtaskState.SUCCEED)
    a = tm.get_task_by_id(a.id)
    assert tm.switch_task_step(a, TaskState.RUNNING, 2, plan(a, 2, ["n1", "n2"], 2))
    (first, _) = tm.get_subtasks(a.id, 2)
    tm.start_subtask(first.id, "n1")
    b = running_task(tm, "b", n=1)
    c = new_task(tm, "c")
    counts = tm.get_step_counts({a.id: 2, b.id: 1, c.id: -1})
    assert counts == {
        a.id: {SubtaskState.RUNNING: 1, SubtaskState.PENDING: 1},
        b.id: {SubtaskState.PENDING: 1},
        c.id: {},
    }
    assert tm.get_step_counts({a.id: 1}) == {a.id: {SubtaskState.SUCCEED: 3}}
    assert tm.get_step_counts({}) == {}


def test_batched_reads_chunk_long_id_lists(task_manager: TaskManager) -> None:
    tm = task_manager
    task = running_task(tm, "a", n=1)
    ids = [task.id, *range(10_000_000, 10_001_200)]  # more than two chunks of ids
    assert set(tm.get_task_bases_by_ids(ids)) == {task.id}
    counts = tm.get_step_counts(dict.fromkeys(ids, 1))
    assert counts[task.id] == {SubtaskState.PENDING: 1}
    assert len(counts) == len(ids)
