"""A small multi-step task type for the scheduler and cluster tests, plus its run recorder.

The task meta (JSON) says what the task does, so one registered type covers every scenario:

``steps``            business steps (1..steps), read once when the scheduler is created
``subtasks``         subtasks per step
``fail``             ``[step, ordinal]`` whose subtask raises a non-retryable error
``plan_error``       ``{"step": s, "times": n, "retryable": bool}``: planning step ``s`` raises ``n`` times
``fail_times``       how many runs of that subtask fail (default: every run)
``block``            subtasks wait for :meth:`Recorder.release` (or their context) before finishing
``block_step``       only subtasks of this step block (default: every step)
``idempotent``       whether a subtask left running may run again (default true)

Every run, plan and ``on_done`` call is recorded in the process-global :data:`RECORDER`,
thread-safe, so tests can assert "each subtask ran exactly once" across the cluster threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dxf_celery import scheduler, taskexecutor
from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Modification, Subtask, Task, TaskBase
from dxf_celery.scheduler import BaseScheduler, TaskHandle, clear_scheduler_factories
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, StepExecutor, clear_task_executors
from helpers.db import SELECTED, make_db_url

TASK_TYPE = "demo"


class PlanError(Exception):
    """Raised by planning when the meta asks for it."""


class RetryablePlanError(PlanError):
    """A planning error the type says is worth retrying."""


class SubtaskBoom(Exception):
    """Raised by a subtask when the meta asks for it."""


@dataclass
class Run:
    task_id: int
    step: int
    ordinal: int
    exec_id: str


@dataclass
class Recorder:
    """Everything the demo type did, shared by every thread of the test process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: list[Run] = field(default_factory=list)
    plans: list[tuple[int, int, int]] = field(default_factory=list)  # (task id, step, n subtasks)
    done: list[tuple[int, str]] = field(default_factory=list)  # (task id, state seen by on_done)
    plan_failures: Counter[tuple[int, int]] = field(default_factory=Counter)
    gate: threading.Event = field(default_factory=threading.Event)
    running: set[tuple[int, int, int]] = field(default_factory=set)
    cleaned: list[int] = field(default_factory=list)

    def reset(self) -> None:
        with self.lock:
            self.runs.clear()
            self.plans.clear()
            self.done.clear()
            self.plan_failures.clear()
            self.running.clear()
            self.cleaned.clear()
        self.gate = threading.Event()

    def release(self) -> None:
        """Let blocked subtasks finish."""
        self.gate.set()

    def runs_of(self, task_id: int) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.task_id == task_id]

    def running_of(self, task_id: int) -> int:
        with self.lock:
            return sum(1 for r in self.running if r[0] == task_id)


RECORDER = Recorder()


def demo_meta(
    *,
    steps: int = 2,
    subtasks: int = 3,
    fail: Sequence[int] | None = None,
    fail_times: int | None = None,
    plan_error: dict[str, Any] | None = None,
    block: bool = False,
    block_step: int | None = None,
    idempotent: bool = True,
) -> bytes:
    return json.dumps(
        {
            "steps": steps,
            "subtasks": subtasks,
            "fail": list(fail) if fail else None,
            "fail_times": fail_times,
            "plan_error": plan_error,
            "block": block,
            "block_step": block_step,
            "idempotent": idempotent,
        }
    ).encode()


def _load(meta: bytes) -> dict[str, Any]:
    data = json.loads(meta or b"{}")
    return data if isinstance(data, dict) else {}


class DemoSchedulerExtension(scheduler.Extension):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def get_next_step(self, task: TaskBase) -> int:
        if task.step == STEP_INIT:
            return 1 if self.steps > 0 else STEP_DONE
        return task.step + 1 if task.step < self.steps else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        meta = _load(task.meta)
        err = meta.get("plan_error")
        if err and err.get("step") == next_step:
            with RECORDER.lock:
                seen = RECORDER.plan_failures[(task.id, next_step)]
                RECORDER.plan_failures[(task.id, next_step)] += 1
            if seen < int(err.get("times", 1)):
                cls = RetryablePlanError if err.get("retryable") else PlanError
                raise cls(f"planning step {next_step} failed")
        if next_step > 1:
            previous = handle.get_previous_subtask_metas(task.id, next_step - 1)
            meta.setdefault("previous_done", {})[str(next_step - 1)] = len(previous)
        meta.setdefault("planned", []).append(next_step)
        task.meta = json.dumps(meta).encode()
        n = int(meta.get("subtasks", 3))
        with RECORDER.lock:
            RECORDER.plans.append((task.id, next_step, n))
        return [json.dumps({"step": next_step, "i": i}).encode() for i in range(n)]

    def on_done(self, ctx: Context, handle: TaskHandle, task: Task) -> None:
        with RECORDER.lock:
            RECORDER.done.append((task.id, task.state.value))

    def is_retryable_err(self, err: BaseException) -> bool:
        return isinstance(err, RetryablePlanError)

    def modify_meta(self, old_meta: bytes, modifications: Sequence[Modification]) -> bytes:
        meta = _load(old_meta)
        for mod in modifications:
            meta[str(mod.type)] = mod.to
        return json.dumps(meta).encode()


class DemoStepExecutor(BaseStepExecutor):
    def __init__(self, task: Task) -> None:
        self.meta = _load(task.meta)

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        key = (subtask.task_id, subtask.step, subtask.ordinal)
        with RECORDER.lock:
            previous = sum(1 for r in RECORDER.runs if (r.task_id, r.step, r.ordinal) == key)
            RECORDER.runs.append(Run(subtask.task_id, subtask.step, subtask.ordinal, subtask.exec_id))
            RECORDER.running.add(key)
        try:
            fail = self.meta.get("fail")
            fail_times = self.meta.get("fail_times")
            if fail and [subtask.step, subtask.ordinal] == list(fail) and (fail_times is None or previous < fail_times):
                raise SubtaskBoom(f"subtask {subtask.step}/{subtask.ordinal} exploded")
            block_step = self.meta.get("block_step")
            if self.meta.get("block") and block_step in (None, subtask.step):
                gate = RECORDER.gate
                while not gate.wait(0.01):
                    ctx.check()
            ctx.check()
            subtask.meta = json.dumps({**_load(subtask.meta), "done_by": subtask.exec_id}).encode()
        finally:
            with RECORDER.lock:
                RECORDER.running.discard(key)


class DemoExecutorExtension(taskexecutor.Extension):
    def __init__(self, task: Task) -> None:
        self.idempotent = bool(_load(task.meta).get("idempotent", True))

    def is_idempotent(self, subtask: Subtask) -> bool:
        return self.idempotent

    def get_step_executor(self, task: Task) -> StepExecutor:
        return DemoStepExecutor(task)


class DemoCleanup:
    def cleanup(self, ctx: Context, task: Task) -> None:
        with RECORDER.lock:
            RECORDER.cleaned.append(task.id)
        task.meta = b'{"redacted": true}'


def register_demo() -> None:
    """Register the demo type on both sides (the scheduler and the executors)."""
    scheduler.register_scheduler_factory(
        TASK_TYPE,
        lambda ctx, task, param: BaseScheduler(
            ctx, task, param, DemoSchedulerExtension(int(_load(task.meta).get("steps", 2)))
        ),
    )
    scheduler.register_cleanup_routine(TASK_TYPE, DemoCleanup)
    taskexecutor.register_task_type(
        TASK_TYPE, lambda ctx, task, param: BaseTaskExecutor(ctx, task, param, DemoExecutorExtension(task))
    )


#: The cluster tests run on SQLite and PostgreSQL.
CLUSTER_DATABASES = [d for d in ("sqlite", "postgresql") if d in SELECTED]
#: Generous: only reached when something is broken.
TIMEOUT = 60.0


@pytest.fixture(params=CLUSTER_DATABASES)
def cluster_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A clean migrated database, with the demo type registered and the recorder reset."""
    clear_scheduler_factories()
    clear_task_executors()
    RECORDER.reset()
    register_demo()
    yield make_db_url(str(request.param), tmp_path)
    RECORDER.release()
    clear_scheduler_factories()
    clear_task_executors()


def scheduler_process(url: str, owner: str, stop: Any) -> None:
    """Child process body: run scheduler passes as ``owner`` until ``stop`` (an Event) is set."""
    from dataclasses import replace

    from dxf_celery.scheduler import Manager, SchedulerIntervals
    from dxf_celery.storage import TaskManager

    register_demo()
    tm = TaskManager(url)
    mgr = Manager(tm, owner_id=owner, intervals=replace(SchedulerIntervals.fast(), node_ttl=3600.0))
    try:
        while not stop.is_set():
            mgr.schedule_once()
            time.sleep(0.005)
    finally:
        tm.dispose()
