"""``noop``: a configurable task type that does (almost) nothing, for tests and benchmarks.

Task meta (JSON, every field optional)::

    {"steps": 1,            # business steps 1..steps
     "subtasks": 4,         # subtasks per step
     "sleep": 0.0,          # seconds each subtask takes
     "sleep_mode": "ctx",   # "ctx": wait on the context (cancel stops it at once)
                            # "busy": a Python loop of short sleeps that never looks at the
                            #         context (stops only if the framework interrupts it)
     "idempotent": true,    # may a subtask found running after a crash run again?
     "fail_ordinals": [],   # subtasks (any step) that raise a non-retryable NoopFailure
     "fail_step": null,     # restrict fail_ordinals to this step
     "record": null}        # file to append "step ordinal exec_id pid" to, once per run

``record`` lets a test count how many times each subtask really ran, across processes
(one short ``O_APPEND`` write per run is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dxf_celery.context import Context
from dxf_celery.errors import DXFError
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, Task, TaskBase
from dxf_celery.scheduler import interfaces as sched
from dxf_celery.scheduler.base_scheduler import BaseScheduler
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.scheduler.register import register_scheduler_factory
from dxf_celery.taskexecutor import BaseTaskExecutor
from dxf_celery.taskexecutor.execute import BaseStepExecutor, StepExecutor, SubtaskSummary
from dxf_celery.taskexecutor.interfaces import Extension as ExecutorExtension
from dxf_celery.taskexecutor.param import Param as ExecutorParam
from dxf_celery.taskexecutor.register import register_task_type

TASK_TYPE = "noop"
SLEEP_MODES = ("ctx", "busy")
#: Steps are numbered 1..MAX_STEPS at most.
MAX_STEPS = 100


class NoopFailure(DXFError):
    """The failure a noop subtask raises when its ordinal is listed in ``fail_ordinals``."""


@dataclass
class NoopMeta:
    """Task meta of a noop task."""

    steps: int = 1
    subtasks: int = 4
    sleep: float = 0.0
    sleep_mode: str = "ctx"
    idempotent: bool = True
    fail_ordinals: list[int] = field(default_factory=list)
    fail_step: int | None = None
    record: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> NoopMeta:
        try:
            data = json.loads(raw or b"{}")
        except ValueError as err:
            raise DXFError(f"noop meta is not JSON ({err})") from None
        if not isinstance(data, dict):
            raise DXFError("noop meta must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise DXFError(f"noop meta has unknown fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        meta = cls(**data)
        if not 1 <= meta.steps <= MAX_STEPS or meta.subtasks < 0 or meta.sleep < 0:
            raise DXFError(f"noop meta needs 1 <= steps <= {MAX_STEPS}, subtasks >= 0 and sleep >= 0")
        if meta.sleep_mode not in SLEEP_MODES:
            raise DXFError(f"noop sleep_mode must be one of {SLEEP_MODES}, got {meta.sleep_mode!r}")
        return meta


def noop_meta(**fields: Any) -> bytes:
    """A validated noop task meta, e.g. ``noop_meta(subtasks=100, sleep=0.01)``."""
    return NoopMeta.from_json(json.dumps(fields)).to_json()


class NoopStepExecutor(BaseStepExecutor):
    def __init__(self, meta: NoopMeta) -> None:
        self.meta = meta
        self.summary = SubtaskSummary()

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        meta = self.meta
        if meta.record:
            line = f"{subtask.step} {subtask.ordinal} {subtask.exec_id} {os.getpid()}\n".encode()
            fd = os.open(meta.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        if meta.sleep > 0:
            if meta.sleep_mode == "ctx":
                ctx.wait(meta.sleep)
                ctx.check()
            else:
                deadline = time.monotonic() + meta.sleep
                while time.monotonic() < deadline:
                    time.sleep(0.01)
        if subtask.ordinal in meta.fail_ordinals and meta.fail_step in (None, subtask.step):
            raise NoopFailure(f"noop subtask {subtask.ordinal} of step {subtask.step} fails as asked by fail_ordinals")
        self.summary.add(rows=1)
        subtask.meta = json.dumps({"ordinal": subtask.ordinal, "exec_id": subtask.exec_id}).encode()

    def realtime_summary(self) -> SubtaskSummary:
        return self.summary

    def reset_summary(self) -> None:
        self.summary.reset()


class NoopExecutorExtension(ExecutorExtension):
    def __init__(self, meta: NoopMeta) -> None:
        self.meta = meta

    def is_idempotent(self, subtask: Subtask) -> bool:
        return self.meta.idempotent

    def get_step_executor(self, task: Task) -> StepExecutor:
        return NoopStepExecutor(NoopMeta.from_json(task.meta))


class NoopSchedulerExtension(sched.Extension):
    """Steps 1..n, each with ``subtasks`` subtasks; the step count is read once in ``get_next_step``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def get_next_step(self, task: TaskBase) -> int:
        if task.step == STEP_INIT:
            return 1
        return task.step + 1 if 1 <= task.step < self.steps else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: sched.TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        meta = NoopMeta.from_json(task.meta)
        return [json.dumps({"step": next_step, "ordinal": i + 1}).encode() for i in range(meta.subtasks)]


def executor_factory(ctx: Context, task: Task, param: ExecutorParam) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, NoopExecutorExtension(NoopMeta.from_json(task.meta)))


def scheduler_factory(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    # get_next_step must not read meta, so the step count is taken here, once per scheduler.
    return BaseScheduler(ctx, task, param, NoopSchedulerExtension(NoopMeta.from_json(task.meta).steps))


def register() -> None:
    """Register both sides of ``noop`` in this process (idempotent)."""
    register_task_type(TASK_TYPE, executor_factory)
    register_scheduler_factory(TASK_TYPE, scheduler_factory)


register()
