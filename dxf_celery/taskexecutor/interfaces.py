"""The contracts of the executor side: what it needs from storage, and what a task type supplies."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dxf_celery.context import Context
from dxf_celery.proto import (
    Subtask,
    SubtaskBase,
    SubtaskClaim,
    SubtaskFinish,
    SubtaskState,
    Task,
    TaskBase,
    TaskExecInfo,
    TaskState,
)
from dxf_celery.retry import warn_misspelt_retry_hook

if TYPE_CHECKING:
    from dxf_celery.taskexecutor.execute import StepExecutor


class SubtaskClaims(Protocol):
    """One executor's claim protocol (``storage.claims.SubtaskClaims``): few round trips per subtask."""

    def claim(self, step: int) -> SubtaskClaim | None:
        """Start the lowest pending subtask of ``step`` on this node while the task is runnable."""
        ...

    def finish_and_claim(self, finish: SubtaskFinish | None, step: int | None) -> SubtaskClaim | None:
        """Record ``finish`` (succeeded) and claim the next subtask of ``step`` (None: claim nothing)."""
        ...

    def close(self) -> None: ...


class TaskTable(Protocol):
    """The storage calls a node makes (implemented by :class:`dxf_celery.storage.TaskManager`)."""

    def get_task_exec_info_by_exec_id(self, exec_id: str) -> list[TaskExecInfo]: ...

    def get_tasks_in_states(self, *states: TaskState | str) -> list[Task]: ...

    def get_task_by_id(self, task_id: int) -> Task: ...

    def get_task_base_by_id(self, task_id: int) -> TaskBase: ...

    def get_subtasks_by_exec_id_and_step_and_states(
        self, exec_id: str, task_id: int, step: int, *states: SubtaskState | str
    ) -> list[Subtask]: ...

    def get_first_subtask_in_states(
        self, exec_id: str, task_id: int, step: int, *states: SubtaskState | str
    ) -> Subtask | None: ...

    def init_meta(
        self, exec_id: str, role: str = "", cpu_count: int | None = None, task_types: Iterable[str] | None = None
    ) -> None: ...

    def recover_meta(
        self, exec_id: str, role: str = "", cpu_count: int | None = None, task_types: Iterable[str] | None = None
    ) -> None: ...

    def heartbeat(self, exec_id: str) -> bool: ...

    def start_subtask(self, subtask_id: int, exec_id: str) -> None: ...

    def subtask_claims(self, exec_id: str, task_id: int) -> SubtaskClaims: ...

    def update_subtask_state_and_error(
        self, exec_id: str, subtask_id: int, state: SubtaskState, err: BaseException | None
    ) -> None: ...

    def fail_subtask(self, exec_id: str, task_id: int, err: BaseException | None) -> bool: ...

    def cancel_subtask(self, exec_id: str, task_id: int) -> bool: ...

    def finish_subtask(self, exec_id: str, subtask_id: int, meta: bytes) -> None: ...

    def subtask_back_to_pending(self, exec_id: str, subtask_id: int) -> bool: ...

    def pause_subtasks(self, exec_id: str, task_id: int) -> int: ...

    def running_subtasks_back_to_pending(self, subtasks: Sequence[SubtaskBase]) -> None: ...

    def update_subtask_summary(self, subtask_id: int, summary: str | dict[str, Any]) -> None: ...

    def save_subtask_checkpoint(self, exec_id: str, subtask_id: int, checkpoint: Any) -> bool: ...

    def get_subtask_checkpoint(self, subtask_id: int) -> Any: ...


class TaskExecutor(Protocol):
    """Runs the subtasks of one task on one node, step after step, until none are left."""

    def init(self, ctx: Context) -> None:
        """Prepare; an error here fails the task unless ``is_retryable_error`` says otherwise."""

    def run(self) -> None:
        """Loop over this node's subtasks; returns when idle, cancelled or the task stopped running."""

    def get_task_base(self) -> TaskBase: ...

    def cancel_running_subtask(self) -> None:
        """Cancel the running subtask so it ends ``canceled``; the executor keeps looping."""

    def cancel(self) -> None:
        """Stop the executor; the running subtask's row is left as it is."""

    def close(self) -> None: ...

    def is_retryable_error(self, err: BaseException) -> bool: ...


class Extension(abc.ABC):
    """What a task type plugs into :class:`BaseTaskExecutor`.

    Defining ``is_retryable_err`` (the scheduler side's spelling) instead of
    :meth:`is_retryable_error` warns when the class is defined.
    """

    _dxf_retry_hook: ClassVar[str] = "is_retryable_error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        warn_misspelt_retry_hook(cls, right="is_retryable_error", wrong="is_retryable_err", side="executor")

    def is_idempotent(self, subtask: Subtask) -> bool:
        """Whether a subtask found ``running`` after a crash may run again (default: never)."""
        return False

    @abc.abstractmethod
    def get_step_executor(self, task: Task) -> StepExecutor:
        """The step executor for ``task.step``; an exception here fails the task."""

    def is_retryable_error(self, err: BaseException) -> bool:
        """Whether ``err`` is transient: the subtask is left ``running`` and tried again."""
        return False

    def allows_parallel_subtasks(self, task: Task) -> bool:
        """Whether one node may run up to ``task``'s concurrency of its subtasks at once (default: no).

        DXF runs one subtask of a task per node at a time and expects the step executor to
        use the task's slots inside. A type whose step code is single-threaded opts in here:
        the executor then runs one *lane* per slot (``task.runtime_slots()``), each with its
        own step executor from :meth:`get_step_executor` (so summaries stay per subtask and
        step code need not be thread-safe), inside the slots the task already holds.
        """
        return False
