"""``e2e``: the task type of the Celery end-to-end tests; it logs every subtask run to a file.

Meta (JSON): ``steps``, ``subtasks``, ``sleep`` (seconds per subtask), ``mode`` ("ctx": waits
on its context; "busy": a Python loop of short sleeps that never looks at the context, so
only the framework's forced interruption stops it), ``idempotent``, ``record`` (the log file),
``hold`` (a file path: every subtask runs until that file exists, see :func:`release`),
``parallel`` (the type allows parallel subtasks).

``hold`` is how a test keeps work open: the subtasks stay running (or blocked in Python,
with ``mode="busy"``) for as long as the test needs, whatever the machine's speed, and end
when the test calls :func:`release` (or cancels, pauses, kills them). No duration is guessed.

Log lines (one ``O_APPEND`` write each, atomic across processes)::

    start <task> <step> <ordinal> <exec_id> <pid> <monotonic>
    end   <task> <step> <ordinal> <exec_id> <pid> <monotonic> <outcome>

``time.monotonic`` is CLOCK_MONOTONIC, shared by all processes of the machine, so the test
can compute how many subtasks ran at once on each node.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, Task, TaskBase
from dxf_celery.scheduler import BaseScheduler, TaskHandle, register_scheduler_factory
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.taskexecutor import (
    BaseStepExecutor,
    BaseTaskExecutor,
    Extension,
    StepExecutor,
    SubtaskSummary,
    register_task_type,
)
from dxf_celery.taskexecutor.param import Param

TASK_TYPE = "e2e"


#: How often a held subtask looks for its release file.
HOLD_POLL = 0.02


def e2e_meta(
    record: str,
    *,
    steps: int = 2,
    subtasks: int = 4,
    sleep: float = 0.05,
    mode: str = "ctx",
    idempotent: bool = True,
    hold: str | os.PathLike[str] | None = None,
    parallel: bool = False,
) -> bytes:
    return json.dumps(
        {
            "steps": steps,
            "subtasks": subtasks,
            "sleep": sleep,
            "mode": mode,
            "idempotent": idempotent,
            "record": record,
            "hold": os.fspath(hold) if hold is not None else None,
            "parallel": parallel,
        }
    ).encode()


def release(hold: str | os.PathLike[str]) -> None:
    """Let every subtask held on ``hold`` finish (now and in any later run)."""
    with open(hold, "a"):
        pass


def _held(ctx: Context, hold: str, busy: bool) -> None:
    """Run until the release file exists; "ctx" mode also ends when the context is cancelled."""
    while not os.path.exists(hold):
        if busy:
            time.sleep(HOLD_POLL)
        else:
            ctx.wait(HOLD_POLL)
            ctx.check()


def _meta(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw or b"{}")
    return data if isinstance(data, dict) else {}


def _log(path: str | None, *fields: object) -> None:
    if not path:
        return
    line = (" ".join(str(f) for f in fields) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class E2EStepExecutor(BaseStepExecutor):
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.summary = SubtaskSummary()

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        record = self.meta.get("record")
        ident = (subtask.task_id, subtask.step, subtask.ordinal, subtask.exec_id, os.getpid())
        _log(record, "start", *ident, time.monotonic())
        outcome = "ok"
        try:
            sleep = float(self.meta.get("sleep", 0))
            hold = self.meta.get("hold")
            if hold:
                _held(ctx, str(hold), self.meta.get("mode") == "busy")
            elif self.meta.get("mode") == "busy":
                deadline = time.monotonic() + sleep
                while time.monotonic() < deadline:
                    time.sleep(0.01)
            elif self.meta.get("mode") == "swallow":
                # Ignores its context and eats every Exception, sleeping most of the time.
                deadline = time.monotonic() + sleep
                while time.monotonic() < deadline:
                    try:
                        time.sleep(0.5)
                        raise ValueError("an error the step code ignores")
                    except Exception:
                        pass
            else:
                ctx.wait(sleep)
                ctx.check()
            # Each finished subtask reports 1,000 rows of 100 bytes (the dashboard's rates).
            self.summary.add(rows=1000, bytes=100_000)
        except BaseException as err:
            outcome = type(err).__name__
            raise
        finally:
            _log(record, "end", *ident, time.monotonic(), outcome)

    def realtime_summary(self) -> SubtaskSummary:
        return self.summary

    def reset_summary(self) -> None:
        self.summary.reset()


class E2EExecutorExtension(Extension):
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def is_idempotent(self, subtask: Subtask) -> bool:
        return bool(self.meta.get("idempotent", True))

    def get_step_executor(self, task: Task) -> StepExecutor:
        return E2EStepExecutor(_meta(task.meta))

    def allows_parallel_subtasks(self, task: Task) -> bool:
        return bool(self.meta.get("parallel", False))


class E2ESchedulerExtension(SchedulerExtension):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def get_next_step(self, task: TaskBase) -> int:
        if task.step == STEP_INIT:
            return 1
        return task.step + 1 if task.step < self.steps else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        count = int(_meta(task.meta).get("subtasks", 1))
        return [json.dumps({"ordinal": i + 1}).encode() for i in range(count)]


def executor_factory(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, E2EExecutorExtension(_meta(task.meta)))


def scheduler_factory(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    return BaseScheduler(ctx, task, param, E2ESchedulerExtension(int(_meta(task.meta).get("steps", 1))))


register_task_type(TASK_TYPE, executor_factory)
register_scheduler_factory(TASK_TYPE, scheduler_factory)
