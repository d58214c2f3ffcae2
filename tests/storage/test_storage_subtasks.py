"""TaskManager, subtask side: step switches, executor writes (keyed by id and exec_id),
scheduler reads, history transfer and GC. Every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers.storage import force_subtask, force_task, new_task, plan, running_task

from dxf_celery.errors import InvalidTaskError, SubtaskNotFoundError, UnstableSubtasksError
from dxf_celery.proto import STEP_INIT, StoredError, SubtaskState, TaskState
from dxf_celery.storage import TaskManager, step_switch, utcnow

# ---------------------------------------------------------------- step switch


def test_switch_task_step_from_pending(task_manager: TaskManager) -> None:
    task = new_task(task_manager, concurrency=2, meta=b"old")
    task.meta = b"planned"
    assert task_manager.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1", "n2"], 3))
    after = task_manager.get_task_by_id(task.id)
    assert (after.state, after.step, after.meta) == (TaskState.RUNNING, 1, b"planned")
    assert after.start_time is not None
    subs = task_manager.get_subtasks(task.id)
    assert [(s.ordinal, s.exec_id, s.state, s.concurrency, s.meta) for s in subs] == [
        (1, "n1", SubtaskState.PENDING, 2, b"m0"),
        (2, "n2", SubtaskState.PENDING, 2, b"m1"),
        (3, "n1", SubtaskState.PENDING, 2, b"m2"),
    ]
    assert all(s.step == 1 and s.type == "t" and s.summary == "{}" and s.start_time is None for s in subs)
    # Guard: the same switch again (stale state/step) changes nothing and inserts nothing.
    assert task_manager.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], 5)) is False
    assert len(task_manager.get_subtasks(task.id)) == 3


def test_switch_task_step_keeps_start_time_after_pending(task_manager: TaskManager) -> None:
    task = running_task(task_manager)
    first_start = task.start_time
    assert task_manager.switch_task_step(task, TaskState.RUNNING, 2, plan(task, 2, ["n1"], 1))
    after = task_manager.get_task_by_id(task.id)
    assert after.step == 2 and after.start_time == first_start
    # Zero subtasks is a valid plan.
    assert task_manager.switch_task_step(after, TaskState.RUNNING, 3, [])
    assert task_manager.get_task_by_id(task.id).step == 3
    # Guard by step: a scheduler holding the step-2 copy loses.
    assert task_manager.switch_task_step(after, TaskState.RUNNING, 4, plan(after, 4, ["n1"], 1)) is False
    assert task_manager.get_subtasks(task.id, 4) == []


def test_switch_task_step_guard_by_state(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    force_task(task_manager, task.id, state=TaskState.CANCELLING)
    assert task_manager.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], 2)) is False
    after = task_manager.get_task_by_id(task.id)
    assert (after.state, after.step, after.start_time) == (TaskState.CANCELLING, STEP_INIT, None)
    assert task_manager.get_subtasks(task.id) == []


def test_switch_task_step_rejects_duplicate_ordinals(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    subs = plan(task, 1, ["n1"], 2)
    subs[1].ordinal = 1
    with pytest.raises(InvalidTaskError, match="ordinals"):
        task_manager.switch_task_step(task, TaskState.RUNNING, 1, subs)
    assert task_manager.get_task_by_id(task.id).state == TaskState.PENDING


def test_switch_task_step_in_batch(task_manager: TaskManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_switch, "MAX_SUBTASK_BATCH_BYTES", 10)  # about one subtask per batch
    task = new_task(task_manager)
    assert task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, plan(task, 1, ["n1", "n2"], 5))
    after = task_manager.get_task_by_id(task.id)
    assert (after.state, after.step) == (TaskState.RUNNING, 1) and after.start_time is not None
    assert [s.ordinal for s in task_manager.get_subtasks(task.id)] == [1, 2, 3, 4, 5]
    # A stale second attempt inserts nothing more and loses the task update.
    assert task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, plan(task, 1, ["n1", "n2"], 5)) is False
    assert len(task_manager.get_subtasks(task.id)) == 5


def test_switch_task_step_in_batch_resumes_partial_insert(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    full = plan(task, 1, ["n1"], 6)
    # A crashed attempt got the first 2 subtasks in, but never moved the task.
    assert task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, full[:2]) is True
    force_task(task_manager, task.id, state=TaskState.PENDING, step=STEP_INIT)
    assert task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, full) is True
    subs = task_manager.get_subtasks(task.id)
    assert [s.ordinal for s in subs] == [1, 2, 3, 4, 5, 6] and [s.meta for s in subs] == [s.meta for s in full]
    assert task_manager.get_task_by_id(task.id).state == TaskState.RUNNING


def test_switch_task_step_in_batch_unstable(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    assert task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], 4))
    force_task(task_manager, task.id, state=TaskState.PENDING, step=STEP_INIT)
    with pytest.raises(UnstableSubtasksError):
        task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], 3))
    assert task_manager.get_task_by_id(task.id).state == TaskState.PENDING


def test_switch_task_step_in_batch_non_prefix_is_unstable(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    full = plan(task, 1, ["n1"], 4)
    assert task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, full[2:3])  # ordinal 3 only
    force_task(task_manager, task.id, state=TaskState.PENDING, step=STEP_INIT)
    with pytest.raises(UnstableSubtasksError):
        task_manager.switch_task_step_in_batch(task, TaskState.RUNNING, 1, full)


# ---------------------------------------------------------------- executor side


def test_get_subtasks_by_exec_id_and_first_subtask(task_manager: TaskManager) -> None:
    task = running_task(task_manager, exec_ids=["n1", "n2"], n=5)
    mine = task_manager.get_subtasks_by_exec_id_and_step_and_states("n1", task.id, 1, SubtaskState.PENDING)
    assert [s.ordinal for s in mine] == [1, 3, 5]
    assert task_manager.get_subtasks_by_exec_id_and_step_and_states("n1", task.id, 2, SubtaskState.PENDING) == []
    assert task_manager.get_subtasks_by_exec_id_and_step_and_states("n1", task.id, 1, SubtaskState.RUNNING) == []
    first = task_manager.get_first_subtask_in_states("n1", task.id, 1, SubtaskState.PENDING, SubtaskState.RUNNING)
    assert first is not None and first.ordinal == 1 and first.meta == b"m0"
    assert task_manager.get_first_subtask_in_states("n3", task.id, 1, SubtaskState.PENDING) is None


def test_start_subtask(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=1)
    (sub,) = task_manager.get_subtasks(task.id)
    with pytest.raises(SubtaskNotFoundError):
        task_manager.start_subtask(sub.id, "other-node")
    with pytest.raises(SubtaskNotFoundError):
        task_manager.start_subtask(10**9, "n1")
    task_manager.start_subtask(sub.id, "n1")
    started = task_manager.get_subtask(sub.id)
    assert started.state == SubtaskState.RUNNING and started.start_time is not None
    with pytest.raises(SubtaskNotFoundError):  # not pending any more
        task_manager.start_subtask(sub.id, "n1")


def test_finish_subtask(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=1)
    (sub,) = task_manager.get_subtasks(task.id)
    task_manager.start_subtask(sub.id, "n1")
    task_manager.finish_subtask("other-node", sub.id, b"stolen")  # wrong exec_id: no-op
    assert task_manager.get_subtask(sub.id).state == SubtaskState.RUNNING
    task_manager.finish_subtask("n1", sub.id, b"rewritten")
    done = task_manager.get_subtask(sub.id)
    assert (done.state, done.meta) == (SubtaskState.SUCCEED, b"rewritten") and done.end_time is not None
    with pytest.raises(InvalidTaskError):
        task_manager.finish_subtask("n1", sub.id, "text")  # type: ignore[arg-type]


def test_update_subtask_state_and_error(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=1)
    (sub,) = task_manager.get_subtasks(task.id)
    task_manager.update_subtask_state_and_error("other", sub.id, SubtaskState.FAILED, ValueError("x"))
    assert task_manager.get_subtask(sub.id).state == SubtaskState.PENDING
    task_manager.update_subtask_state_and_error("n1", sub.id, SubtaskState.FAILED, ValueError("bad row"))
    failed = task_manager.get_subtask(sub.id)
    assert failed.state == SubtaskState.FAILED and failed.error == StoredError("ValueError", "bad row")
    assert failed.end_time is not None


@pytest.mark.parametrize(("method", "state"), [("fail", SubtaskState.FAILED), ("cancel", SubtaskState.CANCELED)])
def test_fail_and_cancel_subtask_touch_one_active_row(task_manager: TaskManager, method: str, state: str) -> None:
    task = running_task(task_manager, n=3)
    subs = task_manager.get_subtasks(task.id)
    force_subtask(task_manager, subs[0].id, state=SubtaskState.SUCCEED)

    def call(exec_id: str) -> bool:
        if method == "fail":
            return task_manager.fail_subtask(exec_id, task.id, RuntimeError("init failed"))
        return task_manager.cancel_subtask(exec_id, task.id)

    assert call("other") is False
    assert call("n1") is True
    after = task_manager.get_subtasks(task.id)
    assert [s.state for s in after] == [SubtaskState.SUCCEED, state, SubtaskState.PENDING]
    assert after[1].end_time is not None and after[1].start_time is not None
    expected_error = StoredError("RuntimeError", "init failed") if method == "fail" else None
    assert after[1].error == expected_error
    assert call("n1") is True and call("n1") is False  # the last active one, then nothing left
    assert task_manager.fail_subtask("n1", task.id, None) is False


def test_pause_resume_and_back_to_pending(task_manager: TaskManager) -> None:
    task = running_task(task_manager, exec_ids=["n1", "n2"], n=4)
    subs = task_manager.get_subtasks(task.id)
    task_manager.start_subtask(subs[0].id, "n1")
    force_subtask(task_manager, subs[2].id, state=SubtaskState.SUCCEED)
    assert task_manager.pause_subtasks("n1", task.id) == 1  # ordinal 1 (running); 3 is done
    assert task_manager.pause_subtasks("n9", task.id) == 0
    states = [s.state for s in task_manager.get_subtasks(task.id)]
    assert states == [SubtaskState.PAUSED, SubtaskState.PENDING, SubtaskState.SUCCEED, SubtaskState.PENDING]
    assert task_manager.pause_subtasks("n2", task.id) == 2
    assert task_manager.resume_subtasks(task.id) == 3
    assert task_manager.resume_subtasks(task.id) == 0
    states = [s.state for s in task_manager.get_subtasks(task.id)]
    assert states == [SubtaskState.PENDING, SubtaskState.PENDING, SubtaskState.SUCCEED, SubtaskState.PENDING]

    task_manager.start_subtask(subs[1].id, "n2")
    moved = task_manager.get_subtask(subs[1].id)
    stale = task_manager.get_subtask(subs[3].id)  # pending: the call only moves running rows
    moved_elsewhere = task_manager.get_subtask(subs[1].id)
    moved_elsewhere.exec_id = "n1"  # wrong exec_id: untouched
    task_manager.running_subtasks_back_to_pending([moved_elsewhere])
    assert task_manager.get_subtask(subs[1].id).state == SubtaskState.RUNNING
    task_manager.running_subtasks_back_to_pending([moved, stale])
    assert task_manager.get_subtask(subs[1].id).state == SubtaskState.PENDING
    task_manager.running_subtasks_back_to_pending([])


def test_subtask_back_to_pending_is_a_compare_and_set(task_manager: TaskManager) -> None:
    """``SubtaskNotStartedError``'s write: only a row still running on this node goes back to pending."""
    task = running_task(task_manager, exec_ids=["n1"], n=4)
    a, b, c, d = task_manager.get_subtasks(task.id)
    for sub in (a, b, c):
        task_manager.start_subtask(sub.id, "n1")
    assert task_manager.subtask_back_to_pending("n1", a.id) is True
    row = task_manager.get_subtask(a.id)
    assert (row.state, row.exec_id, row.start_time, row.error) == (SubtaskState.PENDING, "n1", None, None)
    assert task_manager.subtask_back_to_pending("n1", a.id) is False  # pending now: nothing to do
    assert task_manager.subtask_back_to_pending("n2", b.id) is False  # not this node's row
    assert task_manager.get_subtask(b.id).state == SubtaskState.RUNNING
    force_subtask(task_manager, c.id, state=SubtaskState.SUCCEED)
    assert task_manager.subtask_back_to_pending("n1", c.id) is False  # settled rows stay settled
    assert task_manager.get_subtask(c.id).state == SubtaskState.SUCCEED
    assert task_manager.subtask_back_to_pending("n1", d.id) is False  # never started
    task_manager.start_subtask(a.id, "n1")  # and it can be claimed again
    assert task_manager.get_subtask(a.id).state == SubtaskState.RUNNING


def test_summary_and_checkpoint(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=2)
    a, b = task_manager.get_subtasks(task.id)
    task_manager.update_subtask_summary(a.id, {"row_count": 7, "bytes": 70})
    task_manager.update_subtask_summary(b.id, '{"row_count": 3}')
    assert task_manager.get_subtask(a.id).summary == '{"row_count": 7, "bytes": 70}'
    assert sorted(s["row_count"] for s in task_manager.get_subtask_summaries(task.id, 1)) == [3, 7]


def test_checkpoint_keyed_by_exec_id_and_running(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=2)
    a, b = task_manager.get_subtasks(task.id)
    assert task_manager.get_subtask_checkpoint(a.id) is None
    # Only a running subtask of this node takes a checkpoint.
    assert task_manager.save_subtask_checkpoint("n1", a.id, {"offset": 1}) is False  # still pending
    task_manager.start_subtask(a.id, "n1")
    assert task_manager.save_subtask_checkpoint("n2", a.id, {"offset": 1}) is False  # not this node's
    assert task_manager.get_subtask_checkpoint(a.id) is None
    assert task_manager.save_subtask_checkpoint("n1", a.id, {"offset": 42, "files": ["a", "b"]}) is True
    assert task_manager.get_subtask_checkpoint(a.id) == {"offset": 42, "files": ["a", "b"]}
    # An empty checkpoint is still a checkpoint, distinct from "none saved".
    task_manager.start_subtask(b.id, "n1")
    assert task_manager.save_subtask_checkpoint("n1", b.id, {}) is True
    assert task_manager.get_subtask_checkpoint(b.id) == {}
    with pytest.raises(TypeError):
        task_manager.save_subtask_checkpoint("n1", a.id, {"not json": object()})
    assert task_manager.get_subtask_checkpoint(a.id) == {"offset": 42, "files": ["a", "b"]}
    # A finished subtask keeps its last checkpoint and takes no new one.
    task_manager.finish_subtask("n1", a.id, b"done")
    assert task_manager.save_subtask_checkpoint("n1", a.id, {"offset": 43}) is False
    assert task_manager.get_subtask_checkpoint(a.id) == {"offset": 42, "files": ["a", "b"]}


# ---------------------------------------------------------------- scheduler side


def test_counts_errors_and_listing(task_manager: TaskManager) -> None:
    task = running_task(task_manager, exec_ids=["n1", "n2"], n=4)
    subs = task_manager.get_subtasks(task.id)
    task_manager.update_subtask_state_and_error("n1", subs[0].id, SubtaskState.FAILED, KeyError("k"))
    task_manager.cancel_subtask("n2", task.id)
    task_manager.finish_subtask("n1", subs[2].id, b"out")
    assert task_manager.get_subtask_cnt_group_by_states(task.id, 1) == {
        SubtaskState.FAILED: 1,
        SubtaskState.CANCELED: 1,
        SubtaskState.SUCCEED: 1,
        SubtaskState.PENDING: 1,
    }
    assert task_manager.get_subtask_cnt_group_by_states(task.id, 2) == {}
    assert task_manager.get_subtask_errors(task.id) == [StoredError("KeyError", "'k'"), None]
    succeeded = task_manager.get_all_subtasks_by_step_and_state(task.id, 1, SubtaskState.SUCCEED)
    assert [s.meta for s in succeeded] == [b"out"]
    assert task_manager.get_subtask_counts_by_step(task.id)[1][SubtaskState.PENDING] == 1
    assert [s.ordinal for s in task_manager.get_subtasks(task.id, 1, with_history=False)] == [1, 2, 3, 4]
    assert [s.ordinal for s in task_manager.get_subtasks(task.id, 1)] == [1, 2, 3, 4]
    with pytest.raises(SubtaskNotFoundError):
        task_manager.get_subtask(10**9)


def test_used_slots_active_subtasks_and_busy_nodes(task_manager: TaskManager) -> None:
    a = running_task(task_manager, "a", exec_ids=["n1", "n2"], n=4, concurrency=2)
    b = running_task(task_manager, "b", exec_ids=["n1"], n=2, concurrency=3)
    c = running_task(task_manager, "c", exec_ids=["n3"], n=1, concurrency=5)
    (c_sub,) = task_manager.get_subtasks(c.id)
    force_subtask(task_manager, c_sub.id, state=SubtaskState.SUCCEED)
    # n1: a (2) + b (3); n2: a (2); n3 only has finished work.
    assert task_manager.get_used_slots_on_nodes() == {"n1": 5, "n2": 2}
    assert task_manager.get_busy_nodes() == ["n1", "n2"]
    a_subs = task_manager.get_subtasks(a.id)
    task_manager.start_subtask(a_subs[1].id, "n2")
    force_subtask(task_manager, a_subs[0].id, state=SubtaskState.SUCCEED)
    active = task_manager.get_active_subtasks(a.id)
    assert [(s.ordinal, s.state) for s in active] == [
        (2, SubtaskState.RUNNING),
        (3, SubtaskState.PENDING),
        (4, SubtaskState.PENDING),
    ]
    assert task_manager.get_active_subtasks(c.id) == []
    assert len(task_manager.get_active_subtasks(b.id)) == 2


def test_update_subtasks_exec_ids_guarded_by_state(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=3)
    subs = task_manager.get_active_subtasks(task.id)
    task_manager.start_subtask(subs[2].id, "n1")  # changes state after the balancer read it
    for s in subs:
        s.exec_id = "n2"
    assert task_manager.update_subtasks_exec_ids(subs) == 2
    assert [s.exec_id for s in task_manager.get_subtasks(task.id)] == ["n2", "n2", "n1"]
    assert task_manager.update_subtasks_exec_ids([]) == 0


# ---------------------------------------------------------------- history and GC


def test_transfer_tasks_to_history(task_manager: TaskManager) -> None:
    task = running_task(task_manager, exec_ids=["n1", "n2"], n=3)
    keep = running_task(task_manager, "keep", n=1)
    for s in task_manager.get_subtasks(task.id):
        force_subtask(task_manager, s.id, state=SubtaskState.SUCCEED, summary='{"row_count": 1}')
    assert task_manager.succeed(task.id)
    done = task_manager.get_task_by_id(task.id)
    done.meta = b"redacted"
    # An unfinished task is never moved, even when asked.
    assert task_manager.transfer_tasks_to_history([done, keep]) == 1
    with pytest.raises(Exception, match="task not found"):
        task_manager.get_task_by_id(task.id)
    moved = task_manager.get_task_by_id_with_history(task.id)
    assert (moved.state, moved.meta) == (TaskState.SUCCEED, b"redacted")
    history = task_manager.get_subtasks(task.id)
    assert [(s.ordinal, s.state) for s in history] == [(i, SubtaskState.SUCCEED) for i in (1, 2, 3)]
    assert task_manager.get_subtasks(task.id, with_history=False) == []
    assert sum(s["row_count"] for s in task_manager.get_subtask_summaries(task.id, 1)) == 3
    assert task_manager.get_task_by_id(keep.id).state == TaskState.RUNNING
    assert len(task_manager.get_subtasks(keep.id, with_history=False)) == 1
    # Moving it again is a no-op.
    assert task_manager.transfer_tasks_to_history([done]) == 0
    assert task_manager.transfer_tasks_to_history([]) == 0
    assert [t.key for t in task_manager.list_tasks()] == ["keep", "k1"]
    assert [t.key for t in task_manager.list_tasks(with_history=False)] == ["keep"]


def test_list_shows_live_tasks_by_rank_then_the_newest_finished(task_manager: TaskManager) -> None:
    tm = task_manager
    live_low = new_task(tm, "live-low", priority=900)
    live_high = new_task(tm, "live-high", priority=5)
    finished = [new_task(tm, f"done-{i}") for i in range(3)]
    for task in finished:
        assert tm.fail(task.id, TaskState.PENDING, None)
    assert tm.transfer_tasks_to_history([tm.get_task_by_id(t.id) for t in finished]) == 3
    keys = [t.key for t in tm.list_tasks()]
    assert keys == ["live-high", "live-low", "done-2", "done-1", "done-0"]
    assert [t.key for t in tm.list_tasks(limit=3)] == ["live-high", "live-low", "done-2"]
    assert {live_low.id, live_high.id} < {t.id for t in tm.list_tasks()}


def test_gc_subtasks(task_manager: TaskManager) -> None:
    old = running_task(task_manager, "old", n=2)
    new = running_task(task_manager, "new", n=1)
    for t in (old, new):
        for s in task_manager.get_subtasks(t.id):
            force_subtask(task_manager, s.id, state=SubtaskState.SUCCEED)
        task_manager.succeed(t.id)
    task_manager.transfer_tasks_to_history([task_manager.get_task_by_id(old.id), task_manager.get_task_by_id(new.id)])
    from sqlalchemy import update

    from dxf_celery.storage.tables import subtask_history_table

    with task_manager.write_engine.begin() as conn:
        conn.execute(
            update(subtask_history_table)
            .where(subtask_history_table.c.task_id == old.id)
            .values(state_update_time=utcnow() - timedelta(days=15))
        )
    assert task_manager.gc_subtasks() == 2
    assert task_manager.get_subtasks(old.id) == []
    assert len(task_manager.get_subtasks(new.id)) == 1
    assert task_manager.gc_subtasks(keep_seconds=3600) == 0
    assert task_manager.gc_subtasks(keep_seconds=-1) == 1
