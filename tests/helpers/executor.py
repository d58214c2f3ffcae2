"""Shared harness of the taskexecutor tests: a recording task type, nodes, and a tiny scheduler.

There is no scheduler in these tests: they plan subtasks with ``switch_task_step`` and move
task states with TaskManager calls, the way the scheduler will.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dxf_celery.context import Context
from dxf_celery.proto import NodeResource, StepResource, Subtask, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import (
    BaseStepExecutor,
    BaseTaskExecutor,
    Extension,
    Intervals,
    Manager,
    Param,
    SubtaskSummary,
    clear_task_executors,
    register_task_type,
)

FAST = Intervals.fast()


class RetryableError(Exception):
    """An error the test extension classifies as transient."""


@dataclass
class Run:
    """One call of run_subtask."""

    exec_id: str
    task_id: int
    subtask_id: int
    step: int
    outcome: str = "running"  # ok / error / cancelled(<cause type>)
    cause: str = ""


@dataclass
class Recorder:
    """Everything the test type saw, thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: list[Run] = field(default_factory=list)
    events: list[tuple[str, ...]] = field(default_factory=list)
    # (exec_id, task_id, slots, start, end) of every executor run
    spans: list[list[Any]] = field(default_factory=list)
    resources: list[tuple[int, int]] = field(default_factory=list)
    metas: list[tuple[int, bytes]] = field(default_factory=list)

    def event(self, *item: str) -> None:
        with self.lock:
            self.events.append(item)

    def runs_of(self, subtask_id: int) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.subtask_id == subtask_id]

    def ok_runs(self) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.outcome == "ok"]


Behaviour = Callable[[Context, Subtask], None]


class TestType:
    """A configurable task type; every hook is an attribute the test may replace."""

    __test__ = False

    def __init__(self, name: str, recorder: Recorder | None = None) -> None:
        self.name = name
        self.rec = recorder or Recorder()
        self.idempotent = True
        self.retryable: Callable[[BaseException], bool] = lambda err: isinstance(err, RetryableError)
        self.behaviour: Behaviour = lambda ctx, st: None
        self.get_step_executor_error: Callable[[Task], BaseException | None] = lambda task: None
        self.executor_init_error: Callable[[], BaseException | None] = lambda: None
        self.step_init_error: Callable[[], BaseException | None] = lambda: None
        self.live_meta = False  # step executor accepts task_meta_modified
        self.live_resource = False  # step executor accepts resource_modified
        self.gates: dict[int, threading.Event] = {}  # subtask ordinal -> released when set
        self.parallel = False  # Extension.allows_parallel_subtasks
        self.summaries = False  # step executors report a summary of row_count = the subtask's ordinal

    def block_on_ctx(self) -> None:
        """Subtasks wait on their ctx until their gate (by ordinal) is opened or the ctx is cancelled."""

        def behaviour(ctx: Context, st: Subtask) -> None:
            gate = self.gates.setdefault(st.ordinal, threading.Event())
            while not gate.is_set():
                if ctx.wait(0.005):
                    ctx.check()

        self.behaviour = behaviour

    def release(self, ordinal: int) -> None:
        self.gates.setdefault(ordinal, threading.Event()).set()

    def register(self) -> None:
        register_task_type(self.name, lambda ctx, task, param: RecordingTaskExecutor(ctx, task, param, self))


class RecordingExtension(Extension):
    def __init__(self, tt: TestType) -> None:
        self.tt = tt

    def is_idempotent(self, subtask: Subtask) -> bool:
        return self.tt.idempotent

    def get_step_executor(self, task: Task) -> RecordingStepExecutor:
        err = self.tt.get_step_executor_error(task)
        if err is not None:
            raise err
        return RecordingStepExecutor(self.tt, task)

    def is_retryable_error(self, err: BaseException) -> bool:
        return self.tt.retryable(err)

    def allows_parallel_subtasks(self, task: Task) -> bool:
        return self.tt.parallel


class RecordingStepExecutor(BaseStepExecutor):
    def __init__(self, tt: TestType, task: Task) -> None:
        self.tt = tt
        self.task_meta = task.meta
        self.task_id = task.id
        self.summary = SubtaskSummary()

    def realtime_summary(self) -> SubtaskSummary | None:
        return self.summary if self.tt.summaries else None

    def reset_summary(self) -> None:
        self.summary.reset()

    def init(self, ctx: Context) -> None:
        err = self.tt.step_init_error()
        if err is not None:
            raise err
        self.tt.rec.event("init", str(self.task_id), str(self.step), self.task_meta.decode())

    def cleanup(self, ctx: Context) -> None:
        self.tt.rec.event("cleanup", str(self.task_id), str(self.step))

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        run = Run(subtask.exec_id, subtask.task_id, subtask.id, subtask.step)
        with self.tt.rec.lock:
            self.tt.rec.runs.append(run)
        self.summary.add(rows=subtask.ordinal)
        try:
            self.tt.behaviour(ctx, subtask)
        except BaseException as err:
            run.outcome = "cancelled" if ctx.done() else "error"
            run.cause = type(ctx.cause).__name__ if ctx.done() else type(err).__name__
            raise
        run.outcome = "ok"
        subtask.meta = f"done-{subtask.id}".encode()

    def task_meta_modified(self, ctx: Context, meta: bytes) -> None:
        if not self.tt.live_meta:
            super().task_meta_modified(ctx, meta)
        self.task_meta = meta
        with self.tt.rec.lock:
            self.tt.rec.metas.append((self.task_id, meta))

    def resource_modified(self, ctx: Context, resource: StepResource) -> None:
        if not self.tt.live_resource:
            super().resource_modified(ctx, resource)
        with self.tt.rec.lock:
            self.tt.rec.resources.append((self.task_id, resource.cpu))


class RecordingTaskExecutor(BaseTaskExecutor):
    """Records when run() starts and stops, with the slots the task holds."""

    def __init__(self, ctx: Context, task: Task, param: Param, tt: TestType) -> None:
        super().__init__(ctx, task, param, RecordingExtension(tt))
        self.tt = tt

    def init(self, ctx: Context) -> None:
        err = self.tt.executor_init_error()
        if err is not None:
            raise err

    def run(self) -> None:
        span = [self.param.exec_id, self.task.id, self.task.concurrency, time.monotonic(), None]
        with self.tt.rec.lock:
            self.tt.rec.spans.append(span)
        try:
            super().run()
        finally:
            span[4] = time.monotonic()


def max_overlap(spans: Sequence[Sequence[Any]], exec_id: str) -> int:
    """Largest sum of slots of executor runs of one node that overlap in time."""
    points: list[tuple[float, int]] = []
    for node, _task, slots, start, end in spans:
        if node != exec_id:
            continue
        points.append((start, slots))
        points.append((end if end is not None else float("inf"), -slots))
    points.sort(key=lambda p: (p[0], p[1]))  # ends before starts at equal times
    best = cur = 0
    for _t, delta in points:
        cur += delta
        best = max(best, cur)
    return best


# ---------------------------------------------------------------------- playing the scheduler


def plan_task(
    tm: TaskManager,
    key: str,
    task_type: str,
    nodes: Sequence[str],
    *,
    step: int = 1,
    concurrency: int = 1,
    priority: int = 512,
    meta: bytes = b"{}",
) -> int:
    """Create a task and switch it to ``step`` with one subtask per entry of ``nodes``."""
    task_id = tm.create_task(key, task_type, concurrency, priority=priority, meta=meta)
    switch_step(tm, task_id, step, nodes)
    return task_id


def switch_step(tm: TaskManager, task_id: int, step: int, nodes: Sequence[str]) -> None:
    task = tm.get_task_by_id(task_id)
    subtasks = [
        Subtask(0, task_id, step, task.type, SubtaskState.PENDING, node, i + 1, meta=f"m{i + 1}".encode())
        for i, node in enumerate(nodes)
    ]
    assert tm.switch_task_step(task, TaskState.RUNNING, step, subtasks)


def states(tm: TaskManager, task_id: int, step: int | None = None) -> list[SubtaskState]:
    return [s.state for s in tm.get_subtasks(task_id, step)]


def step_done(tm: TaskManager, task_id: int, step: int) -> bool:
    sts = tm.get_subtasks(task_id, step)
    return bool(sts) and all(s.state == SubtaskState.SUCCEED for s in sts)


# ---------------------------------------------------------------------- nodes


class Cluster:
    """Managers of one process, each with its own exec_id, sharing one TaskManager."""

    def __init__(self, tm: TaskManager, intervals: Intervals = FAST) -> None:
        self.tm = tm
        self.intervals = intervals
        self.managers: dict[str, Manager] = {}
        self.root = Context.background()

    def add(self, exec_id: str, slots: int = 4, *, start: bool = True) -> Manager:
        mgr = Manager(self.root, self.tm, exec_id, NodeResource(slots, slots << 30), intervals=self.intervals)
        mgr.init_meta()
        if start:
            mgr.start()
        self.managers[exec_id] = mgr
        return mgr

    def stop(self) -> None:
        for mgr in self.managers.values():
            mgr.stop(timeout=30)


def cluster_fixture(task_manager: TaskManager) -> Iterator[Cluster]:
    """Body of the ``cluster`` fixture of each test module."""
    clear_task_executors()
    c = Cluster(task_manager)
    yield c
    c.stop()
    clear_task_executors()


def param_factory_fixture(task_manager: TaskManager) -> Callable[..., Param]:
    """A Param for driving one executor directly, without a Manager."""
    from dxf_celery.taskexecutor import SlotManager

    def make(exec_id: str = "n1", slots: int = 4, intervals: Intervals | None = None) -> Param:
        task_manager.init_meta(exec_id, "", slots)
        return Param.for_test(
            task_manager, SlotManager(slots), NodeResource(slots, slots << 30), exec_id, intervals or FAST
        )

    return make


def start_executor(
    tm: TaskManager, tt: TestType, task_id: int, param: Param
) -> tuple[RecordingTaskExecutor, threading.Thread]:
    """Run one executor directly in a thread, as the ThreadLauncher would, without a Manager."""
    task = tm.get_task_by_id(task_id)
    assert param.slot_manager.alloc(task)
    executor = RecordingTaskExecutor(Context.background(), task, param, tt)
    thread = threading.Thread(target=executor.run, daemon=True)
    thread.start()
    return executor, thread
