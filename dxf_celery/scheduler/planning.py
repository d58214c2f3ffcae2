"""Guards around a task type's planner: its output is checked, its retryable errors are bounded.

A planner that returns garbage (None, a str, a list holding non-bytes) would fail the same way
on every pass, so it reverts its task at once with an :class:`InvalidPlanError` naming the type
and what came back. A retryable planning error is tried again after a growing pause, at most
``max_retries`` times in a row for one step, then the task reverts with the last error: a
planner that never recovers must not keep its task (and its slots) forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dxf_celery.errors import InvalidPlanError
from dxf_celery.proto import Task
from dxf_celery.retry import ExponentialBackoff

#: A retryable planning error is retried this many times in a row before the task reverts.
DEFAULT_PLANNING_MAX_RETRIES = 10
#: Cap of the pause between two planning attempts (DXF's scheduler loop period).
DEFAULT_PLANNING_RETRY_MAX_INTERVAL = 3.0

_META_TYPES = (bytes, bytearray, memoryview)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_plan(task: Task, step: int, plan: object) -> list[bytes]:
    """``plan`` as a list of bytes, or :class:`InvalidPlanError` saying what the planner returned."""
    where = f"task type {task.type!r}: on_next_subtasks_batch for step {step}"
    if not isinstance(plan, (list, tuple)):
        raise InvalidPlanError(
            f"{where} returned {type(plan).__name__} {_short(plan)}; it must return a list of bytes "
            f"(one meta per subtask, [] for none)"
        )
    for i, meta in enumerate(plan):
        if not isinstance(meta, _META_TYPES):
            raise InvalidPlanError(
                f"{where} returned a list whose item {i} is {type(meta).__name__} {_short(meta)}; "
                f"every item must be bytes (encode it, e.g. json.dumps(obj).encode())"
            )
    if not isinstance(task.meta, _META_TYPES):
        raise InvalidPlanError(
            f"{where} set task.meta to {type(task.meta).__name__} {_short(task.meta)}; it must stay bytes"
        )
    return [bytes(m) for m in plan]


@dataclass
class _Attempts:
    step: int
    failures: int
    next_try: float


class PlanningRetries:
    """Consecutive retryable planning failures per task, shared by the schedulers of one manager.

    Kept by the manager rather than by a task's scheduler, so a scheduler dropped and created
    again (its slots changed, the lease moved within the process) does not start over.
    """

    def __init__(
        self,
        max_retries: int = DEFAULT_PLANNING_MAX_RETRIES,
        backoff: ExponentialBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_retries = max_retries
        self.backoff = backoff or ExponentialBackoff(0.5, 2.0, DEFAULT_PLANNING_RETRY_MAX_INTERVAL)
        self._clock = clock
        self._lock = threading.Lock()
        self._by_task: dict[int, _Attempts] = {}

    def may_try(self, task_id: int, step: int) -> bool:
        """False while the pause after the last failure of ``step`` has not elapsed."""
        with self._lock:
            a = self._by_task.get(task_id)
            return a is None or a.step != step or self._clock() >= a.next_try

    def failed(self, task_id: int, step: int) -> bool:
        """Record a retryable failure; True when it may be retried, False once the bound is reached."""
        with self._lock:
            a = self._by_task.get(task_id)
            failures = a.failures + 1 if a is not None and a.step == step else 1
            if failures > self.max_retries:
                self._by_task.pop(task_id, None)
                return False
            pause = self.backoff.delay(failures - 1)
            self._by_task[task_id] = _Attempts(step, failures, self._clock() + pause)
            return True

    def failures(self, task_id: int) -> int:
        with self._lock:
            a = self._by_task.get(task_id)
            return a.failures if a is not None else 0

    def forget(self, task_id: int) -> None:
        """The step was planned (or the task left planning): start from zero next time."""
        with self._lock:
            self._by_task.pop(task_id, None)
