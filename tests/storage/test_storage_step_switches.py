"""Several tasks' step switches in one transaction, on every database: each keeps its own
compare-and-set on state and step, and one that loses (its guard, or rows an earlier attempt
left under the unique key) inserts nothing and leaves the others switched."""

from __future__ import annotations

import pytest
from helpers.storage import force_task, new_task, plan

from dxf_celery.errors import InvalidTaskError
from dxf_celery.proto import STEP_INIT, Task, TaskState
from dxf_celery.scheduler.planned import PlannedSubtasks
from dxf_celery.storage import TaskManager
from dxf_celery.storage.step_switch import ROWS_PER_INSERT


def test_switches_in_one_transaction_keep_each_guard(task_manager: TaskManager) -> None:
    tm = task_manager
    a, b, c, d = (new_task(tm, key) for key in "abcd")
    force_task(tm, b.id, state=TaskState.CANCELLING)  # b's guard (pending) no longer holds
    # c: a crashed batched attempt left a row of its step 1 behind (the unique key clashes).
    assert tm.switch_task_step_in_batch(c, TaskState.RUNNING, 1, plan(c, 1, ["n1"], 1))
    force_task(tm, c.id, state=TaskState.PENDING, step=STEP_INIT)
    results = tm.switch_task_steps([(t, TaskState.RUNNING, 1, plan(t, 1, ["n1", "n2"], 3)) for t in (a, b, c, d)])
    assert results == [True, False, False, True]
    for t, want_state, want_rows in ((a, "running", 3), (b, "cancelling", 0), (c, "pending", 1), (d, "running", 3)):
        now = tm.get_task_by_id(t.id)
        assert (now.state.value, now.step) == (want_state, 1 if want_state == "running" else t.step)
        assert len(tm.get_subtasks(t.id, 1)) == want_rows
    assert tm.switch_task_steps([]) == []


def test_a_switch_that_lost_changes_nothing_of_its_task(task_manager: TaskManager) -> None:
    tm = task_manager
    a = new_task(tm, "a")
    assert tm.switch_task_steps([(a, TaskState.RUNNING, 1, plan(a, 1, ["n1"], 2))]) == [True]
    # The same plan again (a second owner's stale copy): the step guard stops it.
    assert tm.switch_task_steps([(a, TaskState.RUNNING, 1, plan(a, 1, ["n1"], 2))]) == [False]
    assert [s.ordinal for s in tm.get_subtasks(a.id, 1)] == [1, 2]


def test_a_big_plan_is_inserted_in_slices_and_each_path_lands_every_row(task_manager: TaskManager) -> None:
    """Rows are built and sent a slice at a time (``ROWS_PER_INSERT``), not held at once: a plan
    of more than two slices lands whole, in order, through the three switch paths."""
    tm = task_manager
    n = 2 * ROWS_PER_INSERT + 7
    a, b, c = (new_task(tm, key) for key in "abc")
    planned = PlannedSubtasks(a, 1, [f"m{i}".encode() for i in range(n)], ["n1", "n2", "n3"])
    assert tm.switch_task_step(a, TaskState.RUNNING, 1, planned)
    assert tm.switch_task_steps([(b, TaskState.RUNNING, 1, plan(b, 1, ["n1"], n))]) == [True]
    assert tm.switch_task_step_in_batch(c, TaskState.RUNNING, 1, plan(c, 1, ["n1"], n))
    for t in (a, b, c):
        rows = tm.get_subtasks(t.id, 1)
        assert [s.ordinal for s in rows] == list(range(1, n + 1))
        assert rows[-1].meta == f"m{n - 1}".encode()
    assert {s.exec_id for s in tm.get_subtasks(a.id, 1)[:3]} == {"n1", "n2", "n3"}


def test_a_bad_meta_in_the_last_slice_writes_nothing(task_manager: TaskManager) -> None:
    """The plan is checked whole before the first slice goes: no half-written step."""
    tm = task_manager
    n = ROWS_PER_INSERT + 3
    for switch in ("one", "many", "batched"):
        task = new_task(tm, switch)
        bad = plan(task, 1, ["n1"], n)
        bad[-1].meta = "not bytes"  # type: ignore[assignment]
        with pytest.raises(InvalidTaskError, match="subtask meta must be bytes"):
            if switch == "one":
                tm.switch_task_step(task, TaskState.RUNNING, 1, bad)
            elif switch == "many":
                tm.switch_task_steps([(task, TaskState.RUNNING, 1, bad)])
            else:
                tm.switch_task_step_in_batch(task, TaskState.RUNNING, 1, bad)
        assert tm.get_subtasks(task.id, 1) == []
        assert tm.get_task_by_id(task.id).state == TaskState.PENDING


def test_planned_subtasks_are_made_on_demand() -> None:
    task = Task(id=7, key="k", type="t", state=TaskState.PENDING, step=STEP_INIT, concurrency=3)
    planned = PlannedSubtasks(task, 2, [b"a", b"b", b"c"], ["n1", "n2"])
    assert len(planned) == 3
    assert [(s.ordinal, s.exec_id, s.meta, s.step, s.concurrency) for s in planned] == [
        (1, "n1", b"a", 2, 3),
        (2, "n2", b"b", 2, 3),
        (3, "n1", b"c", 2, 3),
    ]
    assert planned[-1].ordinal == 3 and [s.ordinal for s in planned[1:]] == [2, 3]
    with pytest.raises(IndexError):
        planned[3]
    with pytest.raises(ValueError, match="at least one node"):
        PlannedSubtasks(task, 2, [b"a"], [])
