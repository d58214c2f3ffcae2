"""The process-wide registry of task types this node can execute."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dxf_celery.context import Context
from dxf_celery.errors import InvalidTaskError
from dxf_celery.proto import Task

if TYPE_CHECKING:
    from dxf_celery.taskexecutor.interfaces import TaskExecutor
    from dxf_celery.taskexecutor.param import Param

#: Builds the executor of one task on this node: ``factory(manager_ctx, task, param)``.
FactoryFn = Callable[[Context, Task, "Param"], "TaskExecutor"]

_factories: dict[str, FactoryFn] = {}
_lock = threading.Lock()


def register_task_type(task_type: str, factory: FactoryFn) -> None:
    """Register (or replace) the executor factory of ``task_type``."""
    if not isinstance(task_type, str) or not task_type:
        raise InvalidTaskError("task_type must be a non-empty string, the type given to submit_task")
    if not callable(factory):
        raise TypeError(f"factory for {task_type!r} must be callable as factory(ctx, task, param)")
    with _lock:
        _factories[task_type] = factory


def get_task_executor_factory(task_type: str) -> FactoryFn | None:
    with _lock:
        return _factories.get(task_type)


def snapshot_task_executors() -> dict[str, FactoryFn]:
    """A copy of every registration, for :func:`restore_task_executors` (tests)."""
    with _lock:
        return dict(_factories)


def restore_task_executors(snapshot: dict[str, FactoryFn]) -> None:
    """Make the registry exactly ``snapshot`` again (tests that register or clear types)."""
    with _lock:
        _factories.clear()
        _factories.update(snapshot)


def clear_task_executors() -> None:
    """Forget every registered type (tests)."""
    with _lock:
        _factories.clear()
