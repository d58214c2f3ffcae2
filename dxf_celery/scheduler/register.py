"""Per task type registry of scheduler factories and cleanup routines.

Registration is process-global (like Celery task registration): every process that may run
the scheduler pass must import the modules that register its task types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeAlias

from dxf_celery.context import Context
from dxf_celery.proto import Task
from dxf_celery.scheduler.interfaces import CleanUpRoutine, Scheduler
from dxf_celery.scheduler.param import Param

#: ``factory(ctx, task, param) -> Scheduler``, typically
#: ``lambda ctx, task, param: BaseScheduler(ctx, task, param, MyExtension())``.
SchedulerFactory: TypeAlias = Callable[[Context, Task, Param], Scheduler]
#: ``factory() -> CleanUpRoutine``.
CleanUpFactory: TypeAlias = Callable[[], CleanUpRoutine]

_lock = threading.Lock()
_schedulers: dict[str, SchedulerFactory] = {}
_cleanups: dict[str, CleanUpFactory] = {}


def register_scheduler_factory(task_type: str, factory: SchedulerFactory) -> None:
    """Make ``task_type`` schedulable; registering again replaces the factory."""
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("task_type must be a non-empty string")
    with _lock:
        _schedulers[task_type] = factory


def get_scheduler_factory(task_type: str) -> SchedulerFactory | None:
    with _lock:
        return _schedulers.get(task_type)


def register_cleanup_routine(task_type: str, factory: CleanUpFactory) -> None:
    """Run ``factory().cleanup(ctx, task)`` on each finished task of ``task_type`` before history."""
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("task_type must be a non-empty string")
    with _lock:
        _cleanups[task_type] = factory


def get_cleanup_routine_factory(task_type: str) -> CleanUpFactory | None:
    with _lock:
        return _cleanups.get(task_type)


#: Both registries of a process, as :func:`snapshot_scheduler_factories` returns them.
SchedulerRegistrations: TypeAlias = tuple[dict[str, SchedulerFactory], dict[str, CleanUpFactory]]


def snapshot_scheduler_factories() -> SchedulerRegistrations:
    """A copy of every scheduler factory and cleanup routine, for restoring later (tests)."""
    with _lock:
        return dict(_schedulers), dict(_cleanups)


def restore_scheduler_factories(snapshot: SchedulerRegistrations) -> None:
    """Make both registries exactly ``snapshot`` again (tests that register or clear types)."""
    schedulers, cleanups = snapshot
    with _lock:
        _schedulers.clear()
        _schedulers.update(schedulers)
        _cleanups.clear()
        _cleanups.update(cleanups)


def clear_scheduler_factories() -> None:
    """Forget every registered scheduler factory and cleanup routine (for tests)."""
    with _lock:
        _schedulers.clear()
        _cleanups.clear()
