"""Step switches of one pass, written together: several tasks' switches in one transaction.

A scheduler that planned a step queues its switch here instead of writing it at once; the
manager flushes the queue after the pass's schedulers ran (``TaskManager.switch_task_steps``:
one transaction, a savepoint per task, so each task keeps its own compare-and-set on state
and step and a lost one leaves the others). If the batch fails as a whole, each switch is
tried on its own, so one task's bad plan cannot hold back the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dxf_celery.errors import DXFError
from dxf_celery.proto import Subtask, Task, TaskState
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)


@dataclass
class _Queued:
    task: Task
    next_state: TaskState
    next_step: int
    subtasks: Sequence[Subtask]
    #: Called with whether the switch won (after the flush wrote it).
    done: Callable[[bool], None]


class StepSwitches:
    """The queue of one pass's small step switches."""

    def __init__(self, task_manager: TaskManager) -> None:
        self._tm = task_manager
        self._queue: list[_Queued] = []

    def add(
        self,
        task: Task,
        next_state: TaskState,
        next_step: int,
        subtasks: Sequence[Subtask],
        done: Callable[[bool], None],
    ) -> None:
        self._queue.append(_Queued(task, next_state, next_step, subtasks, done))

    def __len__(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write every queued switch; returns how many won."""
        queued, self._queue = self._queue, []
        if not queued:
            return 0
        try:
            results = self._tm.switch_task_steps([(q.task, q.next_state, q.next_step, q.subtasks) for q in queued])
        except Exception as err:
            logger.warning("%d step switches in one transaction failed, writing each alone: %s", len(queued), err)
            results = [self._alone(q) for q in queued]
        for q, won in zip(queued, results, strict=True):
            try:
                q.done(won)
            except Exception:
                logger.exception("task %d: after its step switch", q.task.id)
        return sum(results)

    def _alone(self, q: _Queued) -> bool:
        try:
            return self._tm.switch_task_step(q.task, q.next_state, q.next_step, q.subtasks)
        except DXFError as err:
            logger.warning("task %d: step switch failed, retrying next pass: %s", q.task.id, err)
        except Exception:
            logger.exception("task %d: step switch failed, retrying next pass", q.task.id)
        return False
