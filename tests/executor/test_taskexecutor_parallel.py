"""Parallel subtasks (opt-in, ``Extension.allows_parallel_subtasks``): one executor runs up to
``concurrency`` subtasks of its task at once, inside the slots the task already holds.

Overlap is observed with a barrier and an in-flight counter, never with timing: a subtask of
an opt-in type waits until its siblings are running too.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Callable

from helpers.executor import FAST, RetryableError, TestType, plan_task, start_executor, states, step_done
from helpers.waiting import wait_until

from dxf_celery.context import Context
from dxf_celery.errors import NonIdempotentSubtaskError
from dxf_celery.proto import Subtask, SubtaskState, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Param, outcome


class InFlight:
    """How many subtasks run at once, and the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> InFlight:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def _parallel_type(name: str) -> TestType:
    tt = TestType(name)
    tt.parallel = True
    return tt


def _running(tm: TaskManager, task_id: int) -> int:
    return states(tm, task_id).count(SubtaskState.RUNNING)


def test_opt_in_type_runs_concurrency_subtasks_at_once(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-3")
    tt.summaries = True
    barrier = threading.Barrier(3)
    flight = InFlight()

    def behaviour(ctx: Context, st: Subtask) -> None:
        with flight:
            barrier.wait(timeout=30)  # breaks (the subtask fails) unless 3 run at once

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kp3", tt.name, ["n1"] * 9, concurrency=3)
    param = make_param("n1", slots=4)
    executor, thread = start_executor(tm, tt, task_id, param)
    wait_until(lambda: len(tt.rec.runs) >= 3, what="three subtasks running")
    assert param.slot_manager.slots_of(task_id) == 3  # no extra slots for the extra lanes
    thread.join(60)
    assert not thread.is_alive()
    assert step_done(tm, task_id, 1), states(tm, task_id)
    assert flight.most == 3
    assert len(tt.rec.runs) == 9 and len(tt.rec.ok_runs()) == 9
    assert executor.outcome.count(outcome.ENDED_SUCCEED) == 9
    for st in tm.get_subtasks(task_id, 1):
        # Meta and summary of each row are its own subtask's, not a sibling's.
        assert st.meta == f"done-{st.id}".encode()
        assert st.summary is not None
        summary = st.summary if isinstance(st.summary, dict) else json.loads(st.summary)
        assert summary["row_count"] == st.ordinal
    # Each lane had its own step executor: init and cleanup once per lane.
    events = Counter(e[0] for e in tt.rec.events)
    assert events["init"] == events["cleanup"] == 3


def test_default_type_never_overlaps(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = TestType("par-default")
    flight = InFlight()

    def behaviour(ctx: Context, st: Subtask) -> None:
        with flight:
            ctx.wait(0.01)

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kpd", tt.name, ["n1"] * 8, concurrency=3)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1", slots=4))
    thread.join(60)
    assert not thread.is_alive()
    assert step_done(tm, task_id, 1)
    assert flight.most == 1


def test_opt_in_type_at_concurrency_one_runs_one_at_a_time(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-c1")
    flight = InFlight()

    def behaviour(ctx: Context, st: Subtask) -> None:
        with flight:
            ctx.wait(0.01)

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kpc1", tt.name, ["n1"] * 5, concurrency=1)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1", slots=4))
    thread.join(60)
    assert step_done(tm, task_id, 1)
    assert flight.most == 1


def test_revert_during_parallel_run_cancels_every_running_subtask(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-revert")
    tt.block_on_ctx()
    task_id = plan_task(tm, "kpr", tt.name, ["n1"] * 5, concurrency=3)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: _running(tm, task_id) == 3 and len(tt.rec.runs) == 3, what="three subtasks running")
    assert tm.request_cancel(task_id)
    thread.join(30)
    assert not thread.is_alive()
    assert Counter(states(tm, task_id)) == {SubtaskState.CANCELED: 3, SubtaskState.PENDING: 2}
    assert len(tt.rec.runs) == 3  # nothing new started
    assert {r.cause for r in tt.rec.runs} == {"CancelSubtaskError"}


def test_pause_during_parallel_run_leaves_running_rows_untouched(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-pause")
    tt.block_on_ctx()
    task_id = plan_task(tm, "kpp", tt.name, ["n1"] * 5, concurrency=3)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: _running(tm, task_id) == 3 and len(tt.rec.runs) == 3, what="three subtasks running")
    assert tm.request_pause(task_id)
    thread.join(30)
    assert not thread.is_alive()
    # The scheduler pauses running rows; the executor leaves them as they are.
    assert Counter(states(tm, task_id)) == {SubtaskState.RUNNING: 3, SubtaskState.PENDING: 2}
    assert all(r.outcome == "cancelled" and r.cause != "CancelSubtaskError" for r in tt.rec.runs)


def test_cancel_running_subtask_reaches_every_lane(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = _parallel_type("par-crs")
    tt.block_on_ctx()
    task_id = plan_task(tm, "kcrs", tt.name, ["n1"] * 3, concurrency=3)
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: len(tt.rec.runs) == 3, what="three subtasks running")
    executor.cancel_running_subtask()
    wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED] * 3, what="all canceled")
    executor.cancel()
    thread.join(30)
    assert not thread.is_alive()


def test_step_code_ignoring_cancel_is_interrupted_in_every_lane(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    """cancel_grace enforcement works for the lanes on worker threads, not only the executor's."""
    tm = task_manager
    tt = _parallel_type("par-stubborn")
    started = threading.Semaphore(0)

    def behaviour(ctx: Context, st: Subtask) -> None:
        started.release()
        while True:  # ignores its Context; only an interruption ends it
            threading.Event().wait(0.005)

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kst", tt.name, ["n1"] * 3, concurrency=3)
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: len(tt.rec.runs) == 3, what="three subtasks running")
    executor.cancel_running_subtask()
    wait_until(lambda: states(tm, task_id) == [SubtaskState.CANCELED] * 3, what="all interrupted and canceled")
    executor.cancel()
    thread.join(30)
    assert not thread.is_alive()


def test_non_retryable_failure_fails_the_step_and_stops_siblings(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-fail")
    gates: dict[int, threading.Event] = {}

    def behaviour(ctx: Context, st: Subtask) -> None:
        if st.ordinal == 1:
            wait_until(lambda: len(tt.rec.runs) == 3, what="siblings running")
            raise ValueError("bad chunk")
        gate = gates.setdefault(st.ordinal, threading.Event())
        while not gate.is_set():
            if ctx.wait(0.005):
                ctx.check()

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kpf", tt.name, ["n1"] * 6, concurrency=3)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: SubtaskState.FAILED in states(tm, task_id), what="subtask 1 failed")
    # Playing the scheduler: a failed subtask reverts the task, which cancels the siblings.
    assert tm.start_reverting(task_id, TaskState.RUNNING, ValueError("bad chunk"))
    thread.join(30)
    assert not thread.is_alive()
    assert Counter(states(tm, task_id)) == {
        SubtaskState.FAILED: 1,
        SubtaskState.CANCELED: 2,
        SubtaskState.PENDING: 3,
    }
    assert len(tt.rec.runs) == 3  # no lane claimed a subtask after the failure


def test_retryable_error_reruns_the_subtask_while_siblings_go_on(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-retry")
    failed_once = threading.Event()

    def behaviour(ctx: Context, st: Subtask) -> None:
        if st.ordinal == 2 and not failed_once.is_set():
            failed_once.set()
            raise RetryableError("flaky")
        ctx.wait(0.005)

    tt.behaviour = behaviour
    task_id = plan_task(tm, "kprt", tt.name, ["n1"] * 6, concurrency=3)
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    thread.join(60)
    assert not thread.is_alive()
    assert step_done(tm, task_id, 1), states(tm, task_id)
    second = next(s for s in tm.get_subtasks(task_id, 1) if s.ordinal == 2)
    assert [r.outcome for r in tt.rec.runs_of(second.id)] == ["error", "ok"]
    assert len(tt.rec.ok_runs()) == 6


def test_drain_finishes_every_running_subtask_then_stops(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    tm = task_manager
    tt = _parallel_type("par-drain")
    tt.block_on_ctx()
    task_id = plan_task(tm, "kpdr", tt.name, ["n1"] * 6, concurrency=3)
    executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    wait_until(lambda: len(tt.rec.runs) == 3, what="three subtasks running")
    executor.drain()
    for ordinal in range(1, 7):
        tt.release(ordinal)
    thread.join(30)
    assert not thread.is_alive()
    assert Counter(states(tm, task_id)) == {SubtaskState.SUCCEED: 3, SubtaskState.PENDING: 3}
    assert executor.outcome.loop_reason == outcome.LOOP_DRAINED


def test_siblings_are_never_taken_for_crash_leftovers(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    """Non-idempotent type, balance checks every 10 ms while three lanes run: no sibling is failed."""
    tm = task_manager
    tt = _parallel_type("par-siblings")
    tt.idempotent = False
    checks = threading.Semaphore(0)
    flight = InFlight()

    def behaviour(ctx: Context, st: Subtask) -> None:
        with flight:
            for _ in range(3):  # several balance checks while the siblings run
                checks.acquire(timeout=5)
                ctx.wait(0.02)

    tt.behaviour = behaviour
    iv = dataclasses.replace(FAST, check_balance=0.01)
    task_id = plan_task(tm, "kps", tt.name, ["n1"] * 9, concurrency=3)
    executor, thread = start_executor(tm, tt, task_id, make_param("n1", intervals=iv))
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.01):
            checks.release()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        thread.join(60)
    finally:
        stop.set()
    assert not thread.is_alive()
    assert step_done(tm, task_id, 1), states(tm, task_id)
    assert flight.most == 3
    assert executor.outcome.count(outcome.ENDED_FAILED) == 0


def test_running_row_left_by_a_crash_is_handled_by_the_dxf_rule(
    task_manager: TaskManager, make_param: Callable[..., Param]
) -> None:
    """A row of this node found ``running`` that no lane claimed: non-idempotent, it is failed."""
    tm = task_manager
    tt = _parallel_type("par-leftover")
    tt.idempotent = False
    tt.block_on_ctx()
    task_id = plan_task(tm, "kpl", tt.name, ["n1"] * 5, concurrency=2)
    leftover = tm.get_subtasks(task_id, 1)[-1]  # the highest id: the lanes claim lower ones first
    tm.start_subtask(leftover.id, "n1")  # as a crashed earlier run of this node left it
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    try:
        wait_until(lambda: tm.get_subtask(leftover.id).state == SubtaskState.FAILED, what="leftover failed")
        err = tm.get_subtask(leftover.id).error
        assert err is not None and err.type_name == NonIdempotentSubtaskError.__name__
        assert not tt.rec.runs_of(leftover.id)  # never run twice
        assert _running(tm, task_id) == 2  # the two lanes' own subtasks were not touched
    finally:
        for ordinal in range(1, 6):
            tt.release(ordinal)
        thread.join(30)
    assert not thread.is_alive()


def test_idempotent_leftover_runs_again(task_manager: TaskManager, make_param: Callable[..., Param]) -> None:
    tm = task_manager
    tt = _parallel_type("par-leftover-idem")
    task_id = plan_task(tm, "kpli", tt.name, ["n1"] * 5, concurrency=2)
    leftover = tm.get_subtasks(task_id, 1)[-1]
    tm.start_subtask(leftover.id, "n1")
    _executor, thread = start_executor(tm, tt, task_id, make_param("n1"))
    thread.join(60)
    assert not thread.is_alive()
    assert step_done(tm, task_id, 1), states(tm, task_id)
    assert [r.outcome for r in tt.rec.runs_of(leftover.id)] == ["ok"]
