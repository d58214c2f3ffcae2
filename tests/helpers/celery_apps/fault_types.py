"""``fault``: the fault suite's task type; every subtask execution is counted in the ledger.

Meta (JSON): ``steps`` (2), ``subtasks``, ``sleep`` (seconds per subtask, waited on the
subtask's context so a cancel stops it), ``idempotent``, ``ledger`` (the SQLAlchemy URL of
the database holding ``fault_ledger``), ``planner``: ``"ok"``, or ``"none"`` for a
planner that returns ``None`` instead of a list of bytes (a garbage planner), and ``gate``:
a file path; while that file exists, a subtask that has done its work waits (on its context)
before it records its success. A test closes the gate to be sure that a fault finds subtasks
in the middle of their work, not between two of them, and opens it to let them finish.

Step code writes a ``start`` row before its work and a ``success`` row after it, on the
ledger's own connection (:mod:`helpers.ledger`), so the test sees every execution whatever
the framework later does with the subtask's row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, Task, TaskBase
from dxf_celery.scheduler import BaseScheduler, TaskHandle, register_scheduler_factory
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Extension, StepExecutor, register_task_type
from dxf_celery.taskexecutor.param import Param
from helpers import ledger

TASK_TYPE = "fault"
#: How often a subtask held at a closed gate looks again.
GATE_POLL = 0.02


def fault_meta(
    ledger_url: str,
    *,
    subtasks: int,
    idempotent: bool,
    sleep: float = 0.2,
    steps: int = 2,
    planner: str = "ok",
    gate: str | None = None,
) -> bytes:
    return json.dumps(
        {
            "steps": steps,
            "subtasks": subtasks,
            "sleep": sleep,
            "idempotent": idempotent,
            "ledger": ledger_url,
            "planner": planner,
            "gate": gate,
        }
    ).encode()


def _meta(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw or b"{}")
    return data if isinstance(data, dict) else {}


class FaultStepExecutor(BaseStepExecutor):
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def _record(self, kind: str, subtask: Subtask) -> None:
        ledger.record(
            str(self.meta["ledger"]),
            kind,
            subtask.task_id,
            subtask.step,
            subtask.ordinal,
            subtask.id,
            subtask.exec_id,
        )

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        self._record("start", subtask)
        ctx.wait(float(self.meta.get("sleep", 0)))
        ctx.check()
        gate = self.meta.get("gate")
        while gate and os.path.exists(gate):
            ctx.wait(GATE_POLL)
            ctx.check()
        self._record("success", subtask)


class FaultExecutorExtension(Extension):
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def is_idempotent(self, subtask: Subtask) -> bool:
        return bool(self.meta.get("idempotent"))

    def get_step_executor(self, task: Task) -> StepExecutor:
        return FaultStepExecutor(self.meta)


class FaultSchedulerExtension(SchedulerExtension):
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def get_next_step(self, task: TaskBase) -> int:
        steps = int(self.meta.get("steps", 2))
        if task.step == STEP_INIT:
            return 1
        return task.step + 1 if task.step < steps else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        if self.meta.get("planner") == "none":
            return None  # type: ignore[return-value]  # the garbage planner of scenario i
        count = int(self.meta.get("subtasks", 1))
        return [json.dumps({"ordinal": i + 1}).encode() for i in range(count)]


def executor_factory(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, FaultExecutorExtension(_meta(task.meta)))


def scheduler_factory(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    return BaseScheduler(ctx, task, param, FaultSchedulerExtension(_meta(task.meta)))


register_task_type(TASK_TYPE, executor_factory)
register_scheduler_factory(TASK_TYPE, scheduler_factory)
