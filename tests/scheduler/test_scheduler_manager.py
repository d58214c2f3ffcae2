"""The scheduler pass on real databases, with the nodes played by hand (no executors).

Each test registers nodes with ``init_meta`` and marks subtasks as an executor would, then
calls ``Manager.schedule_once()`` and checks the rows it wrote.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
from helpers.cluster_types import RECORDER, TASK_TYPE, demo_meta
from helpers.scheduling import INTERVALS, manager, nodes, passes, run_step, state

from dxf_celery import handle
from dxf_celery.context import Context
from dxf_celery.errors import TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.proto import (
    CANCELLED_BY_USER,
    STEP_DONE,
    ExtraParams,
    Modification,
    ModificationType,
    SubtaskState,
    Task,
    TaskState,
)
from dxf_celery.scheduler import (
    BaseScheduler,
    Extension,
    Manager,
    register_scheduler_factory,
)
from dxf_celery.storage import TaskManager

pytestmark = pytest.mark.usefixtures("demo_type")  # tests/scheduler/conftest.py


def test_lease_one_owner_at_a_time(task_manager: TaskManager) -> None:
    a, b = manager(task_manager, "a"), manager(task_manager, "b")
    assert a.schedule_once()
    assert not b.schedule_once()
    assert a.schedule_once()
    a.release()
    assert b.schedule_once()
    assert not a.schedule_once()


def test_multi_step_task_by_hand(task_manager: TaskManager) -> None:
    tm = task_manager
    m = manager(tm)
    task = handle.submit_task(tm, "k1", TASK_TYPE, meta=demo_meta(steps=2, subtasks=5), concurrency=2)
    # No node yet: the task waits, it does not fail.
    passes(m, 3)
    assert state(tm, task.id) == TaskState.PENDING
    nodes(tm, "n1", "n2")
    passes(m)
    t = handle.get_task(tm, task.id)
    assert (t.state, t.step) == (TaskState.RUNNING, 1)
    assert t.start_time is not None
    subs = tm.get_subtasks(task.id, 1)
    assert [s.ordinal for s in subs] == [1, 2, 3, 4, 5]
    assert [s.exec_id for s in subs] == ["n1", "n2", "n1", "n2", "n1"]
    assert {s.concurrency for s in subs} == {2}
    passes(m, 2)
    assert handle.get_task(tm, task.id).step == 1  # nothing ran: no advance
    assert run_step(tm, task.id, 1) == 5
    passes(m)
    t = handle.get_task(tm, task.id)
    assert t.step == 2
    meta = json.loads(t.meta)
    assert meta["planned"] == [1, 2]  # the hook's meta change was saved with the switch
    assert meta["previous_done"] == {"1": 5}  # the handle saw step 1's results
    run_step(tm, task.id, 2)
    passes(m, 3)
    t = handle.get_task(tm, task.id)
    assert (t.state, t.step) == (TaskState.SUCCEED, STEP_DONE)
    assert RECORDER.done == [(task.id, "running")]
    # Cleanup ran: the task and its subtasks live in history, meta redacted by the routine.
    assert tm.get_tasks_in_states(TaskState.SUCCEED) == []
    assert RECORDER.cleaned == [task.id]
    assert t.meta == b'{"redacted": true}'
    assert len(tm.get_subtasks(task.id)) == 10
    with pytest.raises(TaskAlreadyExistsError):
        handle.submit_task(tm, "k1", TASK_TYPE)


def test_unknown_type_and_init_error_fail_the_task(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")

    class BadInit(BaseScheduler):
        def init(self) -> None:
            raise RuntimeError("cannot init")

    register_scheduler_factory("bad", lambda ctx, task, param: BadInit(ctx, task, param, _NeverExt()))
    unknown = handle.submit_task(tm, "u", "no-such-type")
    bad = handle.submit_task(tm, "b", "bad")
    passes(manager(tm))
    u, b = handle.get_task(tm, unknown.id), handle.get_task(tm, bad.id)
    assert u.state == b.state == TaskState.FAILED
    assert u.error is not None and "unknown task type 'no-such-type'" in str(u.error)
    assert b.error is not None and str(b.error) == "cannot init"


class _NeverExt(Extension):
    def get_next_step(self, task: object) -> int:
        raise AssertionError("never called")

    def on_next_subtasks_batch(self, *args: object) -> list[bytes]:
        raise AssertionError("never called")


def test_failed_subtask_reverts_with_its_error(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(subtasks=2))
    passes(m)
    first, second = tm.get_subtasks(task.id, 1)
    tm.start_subtask(first.id, "n1")
    tm.update_subtask_state_and_error("n1", first.id, SubtaskState.FAILED, ValueError("disk full"))
    tm.start_subtask(second.id, "n1")
    passes(m)
    assert state(tm, task.id) == TaskState.REVERTING
    passes(m, 2)
    assert state(tm, task.id) == TaskState.REVERTING  # a subtask is still running
    assert RECORDER.done == []
    tm.cancel_subtask("n1", task.id)  # the executor cancels it
    passes(m, 2)
    t = handle.get_task(tm, task.id)
    assert t.state == TaskState.REVERTED
    assert t.error is not None and (t.error.type_name, t.error.message) == ("ValueError", "disk full")
    assert RECORDER.done == [(task.id, "reverting")]
    with pytest.raises(Exception, match="disk full"):
        handle.wait_task(tm, task.id, timeout=5)


def test_manual_recovery(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    task = handle.submit_task(
        tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2), extra_params=ExtraParams(manual_recovery=True)
    )
    passes(m)
    a, _ = tm.get_subtasks(task.id, 1)
    tm.start_subtask(a.id, "n1")
    tm.update_subtask_state_and_error("n1", a.id, SubtaskState.FAILED, ValueError("bad row"))
    passes(m)
    t = handle.get_task(tm, task.id)
    assert t.state == TaskState.AWAITING_RESOLUTION and str(t.error) == "bad row"
    passes(m, 2)
    assert state(tm, task.id) == TaskState.AWAITING_RESOLUTION
    assert handle.resolve_task(tm, "k")
    assert not handle.resolve_task(tm, "k")
    passes(m)
    assert state(tm, task.id) == TaskState.RUNNING
    assert run_step(tm, task.id, 1) == 2
    passes(m, 2)
    assert state(tm, task.id) == TaskState.SUCCEED


def test_cancel_pause_resume(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2")
    m = manager(tm)
    paused = handle.submit_task(tm, "p", TASK_TYPE, meta=demo_meta(steps=1, subtasks=4))
    cancelled = handle.submit_task(tm, "c", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2))
    passes(m)
    # Cancel: reverting at once, reverted once no subtask is active.
    assert handle.cancel_task(tm, "c")
    passes(m)
    assert state(tm, cancelled.id) == TaskState.REVERTING
    for s in tm.get_subtasks(cancelled.id, 1):
        tm.cancel_subtask(s.exec_id, cancelled.id)
    passes(m, 2)
    c = handle.get_task(tm, cancelled.id)
    assert c.state == TaskState.REVERTED and str(c.error) == CANCELLED_BY_USER
    # Pause: paused once the executors paused their subtasks.
    assert handle.pause_task(tm, paused.id)
    assert not handle.pause_task(tm, paused.id)
    passes(m, 2)
    assert state(tm, paused.id) == TaskState.PAUSING
    for n in ("n1", "n2"):
        tm.pause_subtasks(n, paused.id)
    passes(m)
    assert handle.wait_task(tm, paused.id, timeout=5).state == TaskState.PAUSED
    passes(m)
    assert m.scheduled_task_ids() == []  # a paused task holds no scheduler (nor slots)
    assert handle.resume_task(tm, "p")
    passes(m, 3)
    assert state(tm, paused.id) == TaskState.RUNNING
    assert {s.state for s in tm.get_subtasks(paused.id, 1)} == {SubtaskState.PENDING}
    run_step(tm, paused.id, 1)
    passes(m, 2)
    assert state(tm, paused.id) == TaskState.SUCCEED


def test_pause_while_pending_then_resume(task_manager: TaskManager) -> None:
    tm = task_manager
    m = manager(tm)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1))
    passes(m)  # no node: stays pending
    assert handle.pause_task(tm, "k")
    passes(m)
    assert state(tm, task.id) == TaskState.PAUSED
    nodes(tm, "n1")
    handle.resume_task(tm, "k")
    passes(m, 3)
    assert state(tm, task.id) == TaskState.RUNNING
    run_step(tm, task.id, 1)
    passes(m, 3)
    assert state(tm, task.id) == TaskState.SUCCEED


@pytest.mark.parametrize("start", ["pending", "running", "paused"])
def test_modify(task_manager: TaskManager, start: str) -> None:
    tm = task_manager
    m = manager(tm)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=4), concurrency=2)
    if start != "pending":
        nodes(tm, "n1", "n2", "n3")
        passes(m)
    if start == "paused":
        handle.pause_task(tm, "k")
        for n in ("n1", "n2", "n3"):
            tm.pause_subtasks(n, task.id)
        passes(m, 2)
    before = state(tm, task.id)
    assert before.value == start
    handle.modify_task(
        tm,
        task.id,
        concurrency=4,
        max_node_count=2,
        modifications=[Modification(ModificationType.BATCH_SIZE.value, 77)],
    )
    assert state(tm, task.id) == TaskState.MODIFYING
    passes(m)
    t = handle.get_task(tm, task.id)
    assert (t.state, t.concurrency, t.max_node_count) == (before, 4, 2)
    assert json.loads(t.meta)["modify_batch_size"] == 77
    assert t.modify_param is None
    assert {s.concurrency for s in tm.get_subtasks(task.id)} <= {4}
    if start == "pending":
        nodes(tm, "n1", "n2", "n3")
        passes(m)
        subs = tm.get_subtasks(task.id, 1)
        assert {s.exec_id for s in subs} == {"n1", "n2"}  # max_node_count honoured by planning
        assert {s.concurrency for s in subs} == {4}
    # 0 removes the limit again.
    handle.modify_task(tm, task.id, max_node_count=0)
    passes(m)
    assert handle.get_task(tm, task.id).max_node_count == 0


def test_modify_refuses_bad_requests(task_manager: TaskManager) -> None:
    from dxf_celery.errors import InvalidTaskError, TaskStateNotAllowedError

    tm = task_manager
    nodes(tm, "n1", cpu=4)
    task = handle.submit_task(tm, "k", TASK_TYPE)
    with pytest.raises(InvalidTaskError, match="larger than the CPU slots"):
        handle.modify_task(tm, task.id, concurrency=5)
    with pytest.raises(InvalidTaskError, match="nothing to modify"):
        handle.modify_task(tm, task.id)
    handle.cancel_task(tm, task.id)
    with pytest.raises(TaskStateNotAllowedError, match="cancelling; only pending, running, paused"):
        handle.modify_task(tm, task.id, concurrency=2)


def test_dead_node_is_deleted_and_its_subtasks_move(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2", "n3")
    m = manager(tm, intervals=replace(INTERVALS, node_ttl=0.3, balance=0.0))
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6))
    passes(m)
    s = tm.get_subtasks(task.id, 1)
    on_n3 = [x for x in s if x.exec_id == "n3"]
    tm.start_subtask(on_n3[0].id, "n3")  # a running one moves too: its node is dead
    # n1 and n2 keep heartbeating; n3 goes silent.
    deadline = 200
    while "n3" in {n.id for n in tm.get_all_nodes()} and deadline:
        tm.heartbeat("n1")
        tm.heartbeat("n2")
        threading.Event().wait(0.05)
        passes(m)
        deadline -= 1
    assert {n.id for n in tm.get_all_nodes()} == {"n1", "n2"}
    tm.heartbeat("n1")
    tm.heartbeat("n2")
    passes(m)
    s = tm.get_subtasks(task.id, 1)
    assert sorted(x.exec_id for x in s) == ["n1", "n1", "n1", "n2", "n2", "n2"]
    assert [x.state for x in s if x.id == on_n3[0].id] == [SubtaskState.RUNNING]


def test_new_node_gets_pending_subtasks(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm, intervals=replace(INTERVALS, balance=0.0))
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6))
    passes(m)
    first = tm.get_subtasks(task.id, 1)[0]
    tm.start_subtask(first.id, "n1")
    nodes(tm, "n2", "n3")
    passes(m)
    s = tm.get_subtasks(task.id, 1)
    assert sorted(x.exec_id for x in s) == ["n1", "n1", "n2", "n2", "n3", "n3"]
    assert next(x for x in s if x.id == first.id).exec_id == "n1"  # running ones never move between live nodes


def test_scope_and_max_node_count(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "a1", "a2")
    nodes(tm, "g1", "g2", role="gpu")
    m = manager(tm)
    gpu = handle.submit_task(tm, "g", TASK_TYPE, meta=demo_meta(steps=1, subtasks=4), target_scope="gpu")
    one = handle.submit_task(tm, "o", TASK_TYPE, meta=demo_meta(steps=1, subtasks=4), max_node_count=1)
    passes(m)
    assert {s.exec_id for s in tm.get_subtasks(gpu.id, 1)} == {"g1", "g2"}
    assert {s.exec_id for s in tm.get_subtasks(one.id, 1)} == {"a1"}
    # "" prefers background nodes once there are some.
    nodes(tm, "b1", role="background")
    bg = handle.submit_task(tm, "b", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2))
    passes(m)
    assert {s.exec_id for s in tm.get_subtasks(bg.id, 1)} == {"b1"}


def test_max_concurrent_tasks_still_serves_cancel(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", cpu=1)  # one slot: a stripe and one reservation on the node, then saturated
    m = manager(tm, intervals=replace(INTERVALS, max_concurrent_tasks=2))
    tasks = [handle.submit_task(tm, f"k{i}", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1)) for i in range(3)]
    passes(m, 2)
    assert [state(tm, t.id) for t in tasks] == [TaskState.RUNNING, TaskState.RUNNING, TaskState.PENDING]
    handle.cancel_task(tm, tasks[2].id)
    handle.cancel_task(tm, tasks[0].id)
    passes(m, 3)
    for s in tm.get_subtasks(tasks[0].id, 1):
        tm.cancel_subtask(s.exec_id, tasks[0].id)
    passes(m, 3)
    assert state(tm, tasks[2].id) == TaskState.REVERTED  # served although two tasks hold slots
    assert state(tm, tasks[0].id) == TaskState.REVERTED


def test_slots_reservation_makes_low_rank_wait(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", cpu=4)
    m = manager(tm)
    low = handle.submit_task(tm, "low", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=4, priority=600)
    passes(m)
    assert state(tm, low.id) == TaskState.RUNNING
    low2 = handle.submit_task(tm, "low2", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=4, priority=700)
    high = handle.submit_task(tm, "high", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=4, priority=1)
    passes(m, 2)
    # The higher-ranked task reserves by stripes ahead of "low"; "low2" cannot fit anywhere.
    assert state(tm, high.id) == TaskState.RUNNING
    assert state(tm, low2.id) == TaskState.PENDING


def test_gc_subtask_history(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm, intervals=replace(INTERVALS, subtask_keep_seconds=3600.0, gc_subtasks=0.0))
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2))
    passes(m)
    run_step(tm, task.id, 1)
    passes(m, 3)
    assert len(tm.get_subtasks(task.id)) == 2  # in history, younger than the retention
    m.release()
    gc = manager(tm, "s1", intervals=replace(INTERVALS, subtask_keep_seconds=0.0, gc_subtasks=0.0))
    passes(gc)
    assert tm.get_subtasks(task.id) == []
    assert handle.get_task(tm, task.id).state == TaskState.SUCCEED  # task history is kept by default
    gc.release()
    kept = manager(tm, "s1", intervals=replace(INTERVALS, gc_subtasks=0.0, history_keep_seconds=3600.0))
    passes(kept)
    assert handle.get_task(tm, task.id).state == TaskState.SUCCEED  # younger than the retention
    kept.release()
    purge = manager(tm, "s1", intervals=replace(INTERVALS, gc_subtasks=0.0, history_keep_seconds=0.0))
    passes(purge)
    with pytest.raises(TaskNotFoundError):
        handle.get_task(tm, task.id)


def test_cleanup_routine_error_keeps_task_live(task_manager: TaskManager) -> None:
    from dxf_celery.scheduler import register_cleanup_routine

    tm = task_manager
    nodes(tm, "n1")

    class Broken:
        calls = 0

        def cleanup(self, ctx: Context, task: Task) -> None:
            Broken.calls += 1
            if Broken.calls < 3:
                raise OSError("bucket unreachable")

    register_cleanup_routine(TASK_TYPE, Broken)
    m = manager(tm, intervals=replace(INTERVALS, cleanup=0.0))
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1))
    passes(m)
    run_step(tm, task.id, 1)
    passes(m, 2)
    assert [t.id for t in tm.get_tasks_in_states(TaskState.SUCCEED)] == [task.id]
    passes(m, 2)
    assert tm.get_tasks_in_states(TaskState.SUCCEED) == []
    assert handle.get_task(tm, task.id).state == TaskState.SUCCEED


def test_progress(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=3))
    passes(m)
    subs = tm.get_subtasks(task.id, 1)
    for i, s in enumerate(subs):
        tm.update_subtask_summary(s.id, {"row_count": 10 * (i + 1), "bytes": 100})
    run_step(tm, task.id, 1)
    passes(m)
    p = handle.get_task_progress(tm, task.id)
    assert p.steps[1].counts == {SubtaskState.SUCCEED: 3}
    assert (p.steps[1].row_count, p.steps[1].bytes) == (60, 300)
    assert p.steps[2].counts == {SubtaskState.PENDING: 3}
    assert p.to_dict()["steps"][1]["counts"] == {"succeed": 3}
    assert [t.key for t in handle.list_tasks(tm, states=["running"])] == ["k"]


def test_two_owners_at_once_plan_each_step_once(task_manager: TaskManager) -> None:
    """Split brain: two managers believe they own the lease and run passes concurrently."""
    tm = task_manager
    nodes(tm, "n1", "n2")
    a, b = manager(tm, "same"), manager(tm, "same")
    tasks = [handle.submit_task(tm, f"k{i}", TASK_TYPE, meta=demo_meta(steps=4, subtasks=5)) for i in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(mgr: Manager) -> None:
        try:
            while not stop.is_set():
                mgr.schedule_once()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=loop, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    try:
        for _ in range(2000):
            if all(state(tm, t.id) == TaskState.SUCCEED for t in tasks):
                break
            for t in tasks:
                cur = handle.get_task(tm, t.id)
                if cur.state == TaskState.RUNNING and cur.step > 0:
                    run_step(tm, t.id, cur.step)
            threading.Event().wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    for t in tasks:
        assert state(tm, t.id) == TaskState.SUCCEED
        subs = tm.get_subtasks(t.id)
        assert sorted((s.step, s.ordinal) for s in subs) == [(st, o) for st in range(1, 5) for o in range(1, 6)]


def test_two_processes_at_once_plan_each_step_once(db_url: str) -> None:
    """The same split brain across processes: two children run passes as the same owner."""
    import multiprocessing
    import time

    from helpers.cluster_types import scheduler_process

    tm = TaskManager(db_url)
    try:
        nodes(tm, "n1", "n2")
        tasks = [handle.submit_task(tm, f"k{i}", TASK_TYPE, meta=demo_meta(steps=4, subtasks=5)) for i in range(3)]
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        procs = [ctx.Process(target=scheduler_process, args=(db_url, "same", stop)) for _ in range(2)]
        for p in procs:
            p.start()
        try:
            deadline = time.monotonic() + 120
            while not all(state(tm, t.id) == TaskState.SUCCEED for t in tasks):
                assert time.monotonic() < deadline, "tasks did not finish"
                assert all(p.is_alive() for p in procs)
                for t in tasks:
                    cur = handle.get_task(tm, t.id)
                    if cur.state == TaskState.RUNNING and cur.step > 0:
                        run_step(tm, t.id, cur.step)
                time.sleep(0.01)
        finally:
            stop.set()
            for p in procs:
                p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
        for t in tasks:
            subs = tm.get_subtasks(t.id)
            assert sorted((s.step, s.ordinal) for s in subs) == [(st, o) for st in range(1, 5) for o in range(1, 6)]
    finally:
        tm.dispose()


def test_task_without_steps_and_empty_steps_succeed(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1")
    m = manager(tm)
    no_steps = handle.submit_task(tm, "none", TASK_TYPE, meta=demo_meta(steps=0))
    empty = handle.submit_task(tm, "empty", TASK_TYPE, meta=demo_meta(steps=3, subtasks=0))
    passes(m, 6)
    assert state(tm, no_steps.id) == TaskState.SUCCEED
    assert state(tm, empty.id) == TaskState.SUCCEED
    assert [step for tid, step, _ in RECORDER.plans if tid == empty.id] == [1, 2, 3]
    assert sorted(RECORDER.done) == sorted([(no_steps.id, "running"), (empty.id, "running")])


def test_large_plan_is_inserted_in_batches(task_manager: TaskManager) -> None:
    tm = task_manager
    nodes(tm, "n1", "n2")
    m = manager(tm, intervals=replace(INTERVALS, batch_switch_bytes=1))
    task = handle.submit_task(tm, "k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=50))
    passes(m)
    t = handle.get_task(tm, task.id)
    assert (t.state, t.step) == (TaskState.RUNNING, 1)
    assert json.loads(t.meta)["planned"] == [1]  # the batched switch saves the hook's meta too
    assert sorted(s.ordinal for s in tm.get_subtasks(task.id, 1)) == list(range(1, 51))


def test_subtask_gc_runs_once_per_interval_cluster_wide(
    task_manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short-lived managers (one per Celery task) must not GC on every pass."""
    import dxf_celery.scheduler.manager as manager_module

    tm = task_manager
    ran: list[float] = []
    real = manager_module.gc_subtask_history
    monkeypatch.setattr(manager_module, "gc_subtask_history", lambda t, keep: ran.append(keep) or real(t, keep))
    for i in range(3):
        m = manager(tm, f"owner-{i}", intervals=replace(INTERVALS, gc_subtasks=3600.0))
        passes(m, 2)
        m.release()
    assert len(ran) == 1
