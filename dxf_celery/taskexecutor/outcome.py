"""What one executor run did on its node and why its loop returned.

:class:`BaseTaskExecutor` fills an :class:`ExecutorOutcome` in place, with as few lines of
its own as possible: its loop returns the reason it stopped (``stopped(*_run_loop())``) and
each way a subtask run ends returns through :meth:`ExecutorOutcome.ended`. Whoever ran the
executor reports it truthfully: the Celery task ``dxf.execute`` turns it into the state and
result Flower shows (:mod:`dxf_celery.worker.outcome`). The loop's own reason is only half
the story (an executor stopped by its Context does not know whether its task was paused or
preempted); the caller completes it with the task's state read after the run. A loop that
raised records no reason: the caller reads that as an interruption (its Context is done) or
a crash.
"""

from __future__ import annotations

import threading
from typing import Any

from dxf_celery.context import Context
from dxf_celery.errors import CancelSubtaskError
from dxf_celery.taskexecutor.ownership import SubtaskMovedAwayError

#: Why the executor's loop returned (:attr:`ExecutorOutcome.loop_reason`).
LOOP_CANCELLED = "cancelled"  # its Context was cancelled (pause, task left running, a drain's grace ran out)
LOOP_DRAINED = "drained"  # its node asked it to drain (preemption, warm shutdown): it stopped at a subtask boundary
LOOP_TASK_STATE = "task_state"  # it read its task in a state that is not runnable
LOOP_GONE = "gone"  # its task is no longer in the live table
LOOP_NO_ROOM = "no_room"  # the task's concurrency grew beyond what this node can give it
LOOP_IDLE = "idle"  # this node had no runnable subtask of the task for max_idle_polls looks
LOOP_CRASHED = "crashed"  # the loop raised; one subtask was failed so the task reverts

#: How one subtask run ended on this node (:meth:`ExecutorOutcome.ended`).
ENDED_SUCCEED = "succeed"
ENDED_FAILED = "failed"
ENDED_CANCELED = "canceled"  # the task is reverting
ENDED_MOVED = "moved"  # the balancer gave it to another node
ENDED_LEFT = "left"  # left for a re-run: pause, preemption, shutdown, a retryable error, SubtaskNotStartedError


def loop_stop(ctx: Context) -> tuple[str, str]:
    """The loop's reason when its Context is done (cancelled) or a drain was asked for (drained)."""
    return (LOOP_CANCELLED if ctx.done() else LOOP_DRAINED), str(ctx.cause or "")


def how_ended(subtask_ctx: Context, retryable: bool) -> str:
    """How a subtask run whose step code raised ended (the branches of ``_run_subtask``)."""
    if subtask_ctx.done():
        if isinstance(subtask_ctx.cause, CancelSubtaskError):
            return ENDED_CANCELED
        return ENDED_MOVED if isinstance(subtask_ctx.cause, SubtaskMovedAwayError) else ENDED_LEFT
    return ENDED_LEFT if retryable else ENDED_FAILED


class ExecutorOutcome:
    """Counters and the stop reason of one executor run (thread-safe: watcher threads may call in)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loop_reason = ""
        self.detail = ""
        #: Steps in the order this run ended a subtask run of them.
        self.steps: list[int] = []
        #: Subtasks that ended ``succeed`` on this node, by step.
        self.succeeded: dict[int, int] = {}
        #: Subtask runs by how they ended (ENDED_*), all steps.
        self.ended_by: dict[str, int] = {}

    def ended(self, step: int, how: str) -> bool:
        """Count a subtask run of ``step`` that ended ``how``; True when it succeeded (``_run_subtask``'s value)."""
        with self._lock:
            if step not in self.steps:
                self.steps.append(step)
            self.ended_by[how] = self.ended_by.get(how, 0) + 1
            if how == ENDED_SUCCEED:
                self.succeeded[step] = self.succeeded.get(step, 0) + 1
        return how == ENDED_SUCCEED

    def stopped(self, reason: str, detail: str = "") -> None:
        """The loop returns for ``reason``; the first reason recorded wins."""
        with self._lock:
            if not self.loop_reason:
                self.loop_reason = reason
                self.detail = detail

    def count(self, how: str) -> int:
        with self._lock:
            return self.ended_by.get(how, 0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters (step numbers as strings, as JSON object keys are)."""
        with self._lock:
            return {
                "steps": list(self.steps),
                "subtasks": sum(self.succeeded.values()),
                "subtasks_by_step": {str(step): n for step, n in sorted(self.succeeded.items())},
                "subtask_ends": dict(sorted(self.ended_by.items())),
            }
