"""Fixtures of the scheduler tests that drive ``Manager.schedule_once()`` by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.cluster_types import RECORDER, register_demo

from dxf_celery.scheduler import clear_scheduler_factories
from dxf_celery.taskexecutor import clear_task_executors


@pytest.fixture
def demo_type() -> Iterator[None]:
    """Only the demo task type registered (scheduler and executor side), its recorder empty."""
    clear_scheduler_factories()
    RECORDER.reset()
    register_demo()
    yield
    clear_scheduler_factories()
    clear_task_executors()
