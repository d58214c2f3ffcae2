"""What a task type implements on the scheduler side, and what the framework hands it.

The scheduler plans; it never runs subtasks. A task type describes its plan through an
:class:`Extension`: which step comes next, which subtasks a step has, what to do when the
task ends. The framework gives the hooks a :class:`TaskHandle` to read what earlier steps
produced, so a step can be planned from the results of the previous one.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from dxf_celery.context import Context
from dxf_celery.proto import Modification, Task, TaskBase
from dxf_celery.retry import warn_misspelt_retry_hook

if TYPE_CHECKING:
    from dxf_celery.storage import TaskManager


@runtime_checkable
class TaskHandle(Protocol):
    """Read access to the results of earlier steps, passed to the planning hooks."""

    def get_previous_subtask_metas(self, task_id: int, step: int) -> list[bytes]:
        """Metas of the succeeded subtasks of ``step`` (as rewritten by ``run_subtask``)."""
        ...

    def get_previous_subtask_summaries(self, task_id: int, step: int) -> list[dict[str, Any]]:
        """Decoded summaries of every subtask of ``step``."""
        ...


class StorageTaskHandle:
    """The :class:`TaskHandle` backed by the task manager: what the framework passes to hooks."""

    def __init__(self, task_manager: TaskManager) -> None:
        self._tm = task_manager

    def get_previous_subtask_metas(self, task_id: int, step: int) -> list[bytes]:
        from dxf_celery.proto import SubtaskState

        return [s.meta for s in self._tm.get_all_subtasks_by_step_and_state(task_id, step, SubtaskState.SUCCEED)]

    def get_previous_subtask_summaries(self, task_id: int, step: int) -> list[dict[str, Any]]:
        return self._tm.get_subtask_summaries(task_id, step)


class Extension(abc.ABC):
    """The scheduler-side behaviour of one task type.

    Only :meth:`get_next_step` and :meth:`on_next_subtasks_batch` must be written; the other
    hooks default to doing nothing. Defining ``is_retryable_error`` (the executor side's
    spelling) instead of :meth:`is_retryable_err` warns when the class is defined.
    """

    _dxf_retry_hook: ClassVar[str] = "is_retryable_err"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        warn_misspelt_retry_hook(cls, right="is_retryable_err", wrong="is_retryable_error", side="scheduler")

    def on_tick(self, ctx: Context, task: Task) -> None:  # noqa: B027 - optional hook
        """Called on every pass while the task waits in running or reverting; keep it cheap."""

    @abc.abstractmethod
    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        """Return one meta per subtask of ``next_step``: a list of bytes (``[]`` for none).

        May change ``task.meta`` (it is saved with the step switch; it must stay bytes) but
        never the task state. Called when the task enters its first step and each time a step
        finishes; never for ``STEP_DONE``. Anything but a list of bytes reverts the task with
        an :class:`~dxf_celery.errors.InvalidPlanError`. A raised error reverts the task
        unless :meth:`is_retryable_err` says to try again: then it is retried after a growing
        pause, at most ``planning_max_retries`` times in a row. The list must be
        deterministic for a given task and step: a large plan is inserted in several
        transactions and may be replanned.
        """

    def on_done(self, ctx: Context, handle: TaskHandle, task: Task) -> None:  # noqa: B027 - optional hook
        """Called before the task becomes succeed or reverted (not when it failed to start).

        An error is retried on the next pass. Two owners during a lease hand-over may both
        call it, so make it idempotent.
        """

    def get_eligible_instances(self, ctx: Context, task: Task) -> list[str]:
        """Nodes allowed to run the task; an empty list means every node of its scope."""
        return []

    def is_retryable_err(self, err: BaseException) -> bool:
        """Whether a planning error should be retried (after a pause, a bounded number of times)."""
        return False

    @abc.abstractmethod
    def get_next_step(self, task: TaskBase) -> int:
        """The step after ``task.step``; ``STEP_DONE`` when the task is complete.

        Must depend only on the base fields (never on meta), because it is asked again after
        a restart with nothing but the stored row.
        """

    def modify_meta(self, old_meta: bytes, modifications: Sequence[Modification]) -> bytes:
        """Apply app-level modifications (batch size, write speed, ...) to the task meta."""
        raise NotImplementedError(f"{type(self).__name__} does not support meta modifications")


@runtime_checkable
class Scheduler(Protocol):
    """One task's scheduler as the manager drives it: ``init`` once, ``schedule_task`` every pass."""

    def init(self) -> None:
        """Prepare; an error fails the task (it could never be scheduled)."""
        ...

    def schedule_task(self) -> bool:
        """Run the handler of the task's current state once; False when the scheduler is done."""
        ...

    def close(self) -> None:
        """Release whatever the scheduler holds; called once it is dropped."""
        ...

    def get_task(self) -> Task:
        """The scheduler's copy of its task."""
        ...


@runtime_checkable
class CleanUpRoutine(Protocol):
    """Per task type work done once a task finished, before it moves to history.

    It may rewrite ``task.meta`` (e.g. redact credentials); the rewritten meta is what the
    history keeps. An error leaves the task live and the routine is called again later.
    """

    def cleanup(self, ctx: Context, task: Task) -> None: ...
