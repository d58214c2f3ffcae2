"""``TaskClient``: the client API (submit, look up, wait, steer, list) defined once.

``DXF`` (the Celery extension), ``LocalCluster`` (threads, for tests) and ``DXFFlask`` differ
only in where their :class:`~dxf_celery.storage.TaskManager` comes from and in what they wake
after a write, so they subclass this class and fill in those hooks; every signature and
default lives here, and each method is one call into :mod:`dxf_celery.handle` (the same
operations as functions taking a TaskManager).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dxf_celery import handle
from dxf_celery.handle import DEFAULT_LIST_LIMIT, TaskProgress
from dxf_celery.proto import EMPTY_META, NORMAL_PRIORITY, ExtraParams, Modification, Subtask, Task, TaskState

if TYPE_CHECKING:
    from dxf_celery.storage import TaskManager

#: The client methods every :class:`TaskClient` has (a test compares them across the clients).
CLIENT_METHODS = (
    "submit_task",
    "get_task",
    "wait_task",
    "cancel_task",
    "pause_task",
    "resume_task",
    "resolve_task",
    "modify_task",
    "list_tasks",
    "get_subtasks",
    "get_task_progress",
    "wake",
)


class TaskClient(ABC):
    """Submit and steer DXF tasks; subclasses say where the TaskManager is and whom to wake.

    Writes only record the requested state: a scheduler pass does the work. ``_wake`` lets
    a client shorten the wait for that pass (DXF sends a wake-up message); by default the
    next regular pass picks the change up.
    """

    # ------------------------------------------------------------------ hooks

    @property
    @abstractmethod
    def task_manager(self) -> TaskManager:
        """The TaskManager the client reads and writes through."""

    def _wake(self, reason: str) -> None:
        """Ask for a scheduler pass soon after a write (``reason`` names the write)."""
        del reason  # by default nothing: the next regular scheduler pass sees the write

    def _wait_poll_interval(self) -> float:
        """How often :meth:`wait_task` polls when the caller does not say."""
        return handle.WAIT_POLL_INTERVAL

    # ------------------------------------------------------------------ the API

    def submit_task(
        self,
        key: str,
        task_type: str,
        *,
        meta: bytes = EMPTY_META,
        concurrency: int = 1,
        priority: int = NORMAL_PRIORITY,
        target_scope: str = "",
        max_node_count: int = 0,
        extra_params: ExtraParams | None = None,
    ) -> Task:
        """Create a pending task and return it; a scheduler pass plans it (see :func:`handle.submit_task`)."""
        task = handle.submit_task(
            self.task_manager,
            key,
            task_type,
            meta=meta,
            concurrency=concurrency,
            priority=priority,
            target_scope=target_scope,
            max_node_count=max_node_count,
            extra_params=extra_params,
        )
        self._wake("submit")
        return task

    def get_task(self, key_or_id: str | int) -> Task:
        """The task by id (int) or key (str), live or in history."""
        return handle.get_task(self.task_manager, key_or_id)

    def wait_task(
        self,
        task_id: int,
        timeout: float | None = None,
        raise_error: bool = True,
        poll_interval: float | None = None,
    ) -> Task:
        """Poll until the task is succeed, reverted, failed or paused (see :func:`handle.wait_task`).

        ``poll_interval=None`` polls at the client's own pace (a LocalCluster polls at its
        check interval when that is shorter than the usual 0.3 s).
        """
        poll = self._wait_poll_interval() if poll_interval is None else poll_interval
        return handle.wait_task(
            self.task_manager, task_id, timeout=timeout, raise_error=raise_error, poll_interval=poll
        )

    def cancel_task(self, key_or_id: str | int) -> bool:
        """Ask to cancel; True when the task was pending, running or awaiting resolution."""
        return self._woken(handle.cancel_task(self.task_manager, key_or_id), "cancel")

    def pause_task(self, key_or_id: str | int) -> bool:
        """Ask to pause; True when the task was pending or running."""
        return self._woken(handle.pause_task(self.task_manager, key_or_id), "pause")

    def resume_task(self, key_or_id: str | int) -> bool:
        """Resume a paused task; True when it was paused."""
        return self._woken(handle.resume_task(self.task_manager, key_or_id), "resume")

    def resolve_task(self, key_or_id: str | int) -> bool:
        """Rerun the failed subtasks of an awaiting-resolution task; True when it was awaiting."""
        return self._woken(handle.resolve_task(self.task_manager, key_or_id), "resolve")

    def modify_task(
        self,
        task_id: int,
        *,
        concurrency: int | None = None,
        max_node_count: int | None = None,
        modifications: Sequence[Modification] = (),
    ) -> None:
        """Change a pending, running or paused task's concurrency, node limit or app settings."""
        handle.modify_task(
            self.task_manager,
            task_id,
            concurrency=concurrency,
            max_node_count=max_node_count,
            modifications=modifications,
        )
        self._wake("modify")

    def list_tasks(
        self, states: Sequence[TaskState | str] | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[Task]:
        """Tasks, live first then history, in rank order, optionally only in ``states``."""
        return handle.list_tasks(self.task_manager, states, limit)

    def get_subtasks(self, task_id: int, step: int | None = None) -> list[Subtask]:
        """Subtasks of a task (live and history), ordered by step and ordinal."""
        return handle.get_subtasks(self.task_manager, task_id, step)

    def get_task_progress(self, task_id: int) -> TaskProgress:
        """Subtask counts per step and state, with summed row counts and bytes."""
        return handle.get_task_progress(self.task_manager, task_id)

    def wake(self) -> None:
        """Ask for a scheduler pass now instead of at the next regular one."""
        self._wake("wake")

    def _woken(self, done: bool, reason: str) -> bool:
        if done:
            self._wake(reason)
        return done


__all__ = ["CLIENT_METHODS", "TaskClient"]
