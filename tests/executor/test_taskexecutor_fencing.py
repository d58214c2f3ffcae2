"""Self-fencing (issue 9): an executor that wakes from a freeze, or lost the database, re-checks ownership at once.

The real freeze (SIGSTOP of a worker past the node TTL) is in tests/celery/test_worker_drain.py;
here the watcher's clock jumps instead (a process cannot stop its own threads), against a real
database, so what is pinned is the decision: no periodic balance check is waited for.
"""

from __future__ import annotations

from dataclasses import replace

from helpers.executor import RecordingExtension, TestType, plan_task

from dxf_celery.context import Context
from dxf_celery.errors import NodeFencedError
from dxf_celery.proto import NodeResource, SubtaskBase, SubtaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Param, SlotManager
from dxf_celery.taskexecutor.fencing import Fence, FenceCheck, may_finish, verify_owned
from dxf_celery.taskexecutor.ownership import SubtaskMovedAwayError


def _param(tm: TaskManager, **intervals: float) -> Param:
    param = Param.for_test(tm, SlotManager(1), NodeResource(1, 1 << 30), "n1")
    return replace(param, intervals=replace(param.intervals, **intervals)) if intervals else param


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _running_subtask(tm: TaskManager, name: str):  # type: ignore[no-untyped-def]
    task_id = plan_task(tm, name, name, ["n1"])
    (sub,) = tm.get_subtasks(task_id)
    tm.start_subtask(sub.id, "n1")
    return tm.get_subtask(sub.id)


def _move(tm: TaskManager, sub: SubtaskBase, to: str) -> None:
    moved = SubtaskBase(sub.id, sub.task_id, sub.step, sub.type, SubtaskState.RUNNING, to, sub.ordinal)
    assert tm.update_subtasks_exec_ids([moved]) == 1


def test_a_wake_up_checks_ownership_at_once_and_cancels_a_moved_subtask(task_manager: TaskManager) -> None:
    tm = task_manager
    tt = TestType("fence-wake")
    sub = _running_subtask(tm, tt.name)
    clock = Clock()
    fence = Fence(5.0, clock=clock)
    ctx = Context.background()
    check = FenceCheck(fence, _param(tm), RecordingExtension(tt), sub, ctx)
    clock.now += 0.3
    fence.reached()
    assert check() is True
    _move(tm, sub, "n2")
    clock.now += 0.3
    fence.reached()
    assert check() is True and not ctx.done()  # no gap: left to the periodic balance check
    clock.now += 60.0  # the process was frozen for a minute
    assert check() is False
    assert isinstance(ctx.cause, SubtaskMovedAwayError)
    assert not may_finish(tm, "n1", sub)  # and its result would not be written


def test_a_wake_up_keeps_a_subtask_that_is_still_ours(task_manager: TaskManager) -> None:
    tm = task_manager
    tt = TestType("fence-ours")
    sub = _running_subtask(tm, tt.name)
    clock = Clock()
    fence = Fence(5.0, clock=clock)
    ctx = Context.background()
    check = FenceCheck(fence, _param(tm), RecordingExtension(tt), sub, ctx)
    clock.now += 60.0
    assert check() is True and not ctx.done()
    assert not fence.fenced()  # the read renewed the contact
    assert verify_owned(tm, "n1", sub) is True and may_finish(tm, "n1", sub)


def test_without_the_database_only_an_idempotent_subtask_is_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The database is away (a port nobody listens on): past a TTL, an idempotent subtask may have moved."""
    from helpers.db import make_db_url

    live = TaskManager(make_db_url("sqlite", tmp_path))
    gone = TaskManager("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    try:
        for idempotent in (False, True):
            tt = TestType(f"fence-away-{idempotent}")
            tt.idempotent = idempotent
            sub = _running_subtask(live, tt.name)
            clock = Clock()
            fence = Fence(5.0, clock=clock)
            ctx = Context.background()
            check = FenceCheck(fence, _param(gone), RecordingExtension(tt), sub, ctx)
            clock.now += 6.0
            assert check() is True and not ctx.done()  # fenced, cannot tell yet: keep running
            clock.now += 6.0
            if idempotent:
                assert check() is False and isinstance(ctx.cause, NodeFencedError)
            else:
                assert check() is True and not ctx.done()  # the scheduler never hands it to another node
            assert verify_owned(gone, "n1", sub) is None and may_finish(gone, "n1", sub)
    finally:
        live.dispose()
        gone.dispose()


def test_without_the_database_an_idempotent_subtask_runs_on_until_its_node_could_be_lost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Suspect is not lost: the scheduler keeps a silent node's running rows until TTL + lost grace."""
    from helpers.db import make_db_url

    live = TaskManager(make_db_url("sqlite", tmp_path))
    gone = TaskManager("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    try:
        tt = TestType("fence-grace")
        tt.idempotent = True
        sub = _running_subtask(live, tt.name)
        clock = Clock()
        fence = Fence(5.0, clock=clock)
        ctx = Context.background()
        check = FenceCheck(fence, _param(gone, stop_idempotent_after=70.0), RecordingExtension(tt), sub, ctx)
        clock.now += 12.0  # past a TTL of silence, within TTL + lost grace
        assert check() is True and not ctx.done()
        clock.now += 60.0
        assert check() is False and isinstance(ctx.cause, NodeFencedError)
    finally:
        live.dispose()
        gone.dispose()
