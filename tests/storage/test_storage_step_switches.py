"""Several tasks' step switches in one transaction, on every database: each keeps its own
compare-and-set on state and step, and one that loses (its guard, or rows an earlier attempt
left under the unique key) inserts nothing and leaves the others switched."""

from __future__ import annotations

from helpers.storage import force_task, new_task, plan

from dxf_celery.proto import STEP_INIT, TaskState
from dxf_celery.storage import TaskManager


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
