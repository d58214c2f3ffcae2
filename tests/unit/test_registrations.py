"""Task-type registrations are process-global; ``preserved_registrations`` gives tests a clean undo."""

from __future__ import annotations

from dxf_celery.scheduler import get_cleanup_routine_factory, get_scheduler_factory, register_scheduler_factory
from dxf_celery.scheduler.register import clear_scheduler_factories
from dxf_celery.taskexecutor import clear_task_executors, get_task_executor_factory, register_task_type
from dxf_celery.testing import preserved_registrations


def _executor_factory(*args: object) -> object:
    raise AssertionError("never built")


def _scheduler_factory(*args: object) -> object:
    raise AssertionError("never built")


def test_registrations_made_or_cleared_inside_are_undone() -> None:
    with preserved_registrations():
        register_task_type("kept", _executor_factory)  # type: ignore[arg-type]
        register_scheduler_factory("kept", _scheduler_factory)  # type: ignore[arg-type]
        with preserved_registrations():
            clear_task_executors()
            clear_scheduler_factories()
            register_task_type("inner-only", _executor_factory)  # type: ignore[arg-type]
            assert get_task_executor_factory("kept") is None
        assert get_task_executor_factory("kept") is _executor_factory
        assert get_scheduler_factory("kept") is _scheduler_factory
        assert get_task_executor_factory("inner-only") is None
    assert get_task_executor_factory("kept") is None
    assert get_scheduler_factory("kept") is None
    assert get_cleanup_routine_factory("kept") is None
