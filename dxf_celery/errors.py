"""Exceptions raised by dxf-celery.

Every error the framework raises on purpose derives from :class:`DXFError`, so callers can
catch the framework's errors without catching driver or programming errors by accident. The
one exception is :class:`ExecutorCancelledError`, a ``BaseException`` on purpose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dxf_celery.proto import Task


class DXFError(Exception):
    """Base class of every error dxf-celery raises on purpose."""


class InvalidTaskError(DXFError, ValueError):
    """The caller passed something the framework cannot store (empty key, bad meta, ...)."""


class TaskNotFoundError(DXFError, LookupError):
    """No task with that id or key (in the live table, or also in history where asked)."""

    def __init__(self, message: str = "task not found") -> None:
        super().__init__(message)


class TaskAlreadyExistsError(DXFError):
    """A task with that key exists already, live or in history; keys are never reused."""


class TaskStateNotAllowedError(DXFError):
    """The task is not in a state that allows the requested change."""


class TaskChangedError(DXFError):
    """The task changed state under a compare-and-set that needed it unchanged."""


class SubtaskNotFoundError(DXFError, LookupError):
    """The subtask is gone or now belongs to another node (its exec_id changed)."""

    def __init__(self, message: str = "subtask not found") -> None:
        super().__init__(message)


class UnstableSubtasksError(DXFError):
    """A batched step switch found more subtasks than planned: the plan is not deterministic."""


class InvalidPlanError(DXFError, TypeError):
    """A task type's ``on_next_subtasks_batch`` returned something other than a list of bytes.

    Never retried: the same planner would return the same thing again.
    """


class NonIdempotentSubtaskError(DXFError):
    """A subtask was found ``running`` after a crash and its type cannot run it twice."""

    def __init__(self, message: str = "subtask in running state and is not idempotent") -> None:
        super().__init__(message)


class CancelSubtaskError(DXFError):
    """Cancel cause that makes the running subtask end ``canceled`` (the task is reverting)."""

    def __init__(self, message: str = "cancel subtasks") -> None:
        super().__init__(message)


class SubtaskNotStartedError(DXFError):
    """Raise it from ``run_subtask`` to say "I stopped before doing any side effect".

    The framework then puts the row back to ``pending`` (only if it is still ``running`` on
    this node), so it runs again later - here or on another node - instead of being left
    ``running``, which a non-idempotent type could never resume. Typical use: step code that
    sees its Context cancelled (drain grace over, preemption, shutdown) before it wrote anything.
    """

    def __init__(self, message: str = "subtask stopped before doing anything") -> None:
        super().__init__(message)


class DrainGraceExpiredError(DXFError):
    """Cancel cause of a subtask still running when its executor's drain grace ran out (row left ``running``)."""

    def __init__(self, message: str = "the drain grace (dxf_drain_grace) ran out before the subtask finished") -> None:
        super().__init__(message)


class NodeFencedError(DXFError):
    """Cancel cause of a subtask whose node lost touch with the database for longer than the node TTL.

    The scheduler may have given the row to another node meanwhile; the row is left as it is.
    """

    def __init__(self, message: str = "this node could not renew its liveness for longer than dxf_node_ttl") -> None:
        super().__init__(message)


class ExecutorCancelledError(BaseException):
    """Raised inside step code that did not stop within ``cancel_grace`` after its Context was cancelled.

    A ``BaseException`` (like ``asyncio.CancelledError``), so step code's ``except Exception``
    does not swallow it; the executor catches it where ``run_subtask`` returns and records
    the subtask as its Context's cause says (``canceled`` when the task reverts, untouched
    on pause or shutdown). Step code may catch it to clean up, and must re-raise it.
    """

    def __init__(self, message: str = "subtask interrupted: it did not stop after its context was cancelled") -> None:
        super().__init__(message)


class UnknownTaskTypeError(DXFError):
    """No executor or scheduler is registered for the task's type on this process."""


class StorageUnavailableError(DXFError, ConnectionError):
    """The database could not be reached; the message names the URL without its password."""


class StorageSchemaError(DXFError):
    """The dxf tables are missing or out of date: run the migration."""


class StorageDataError(DXFError, ValueError):
    """The database refused a value or statement (too long, wrong type): not worth a retry."""


def is_transient_error(err: BaseException) -> bool:
    """True for errors a later retry may not meet: the database was unreachable or timed out.

    Storage translates every driver error it lets out (deadlocks are replayed inside it and
    surface as :class:`StorageUnavailableError` when they persist), so this is decided from
    the DXF errors alone and needs no database driver. Schema and data errors are never
    transient: the same statement fails again. ``storage.is_transient_error`` also knows the
    raw driver errors, for code that talks to a database itself.
    """
    if isinstance(err, (StorageSchemaError, StorageDataError)):
        return False
    return isinstance(err, (StorageUnavailableError, ConnectionError, TimeoutError))


class TaskFailedError(DXFError):
    """A waited-for task ended ``failed`` or ``reverted``; ``.task`` holds the final row."""

    def __init__(self, task: Task) -> None:
        self.task = task
        detail = f": {task.error}" if task.error is not None else ""
        super().__init__(f"task {task.id} ({task.key!r}) ended {task.state.value}{detail}")


__all__ = [
    "CancelSubtaskError",
    "DXFError",
    "ExecutorCancelledError",
    "InvalidPlanError",
    "InvalidTaskError",
    "NonIdempotentSubtaskError",
    "StorageDataError",
    "StorageSchemaError",
    "StorageUnavailableError",
    "SubtaskNotFoundError",
    "TaskAlreadyExistsError",
    "TaskChangedError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskStateNotAllowedError",
    "UnknownTaskTypeError",
    "UnstableSubtasksError",
    "is_transient_error",
]
