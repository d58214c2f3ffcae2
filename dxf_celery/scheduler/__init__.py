"""The scheduler side of DXF: plans steps, drives task states, watches nodes, balances, cleans up.

Runs on one owner at a time (a database lease); see :class:`Manager`. Task types plug in
with :func:`register_scheduler_factory` and an :class:`Extension`.
"""

from __future__ import annotations

from dxf_celery.scheduler.balancer import Balancer
from dxf_celery.scheduler.base_scheduler import CANCELLED_ERROR, BaseScheduler
from dxf_celery.scheduler.cleanup import cleanup_finished_tasks, gc_subtask_history
from dxf_celery.scheduler.interfaces import CleanUpRoutine, Extension, Scheduler, StorageTaskHandle, TaskHandle
from dxf_celery.scheduler.manager import LEASE_NAME, Manager
from dxf_celery.scheduler.nodes import BACKGROUND_ROLE, NodeManager, filter_by_scope
from dxf_celery.scheduler.param import DEFAULT_BATCH_SWITCH_BYTES, Param, SchedulerIntervals
from dxf_celery.scheduler.register import (
    CleanUpFactory,
    SchedulerFactory,
    clear_scheduler_factories,
    get_cleanup_routine_factory,
    get_scheduler_factory,
    register_cleanup_routine,
    register_scheduler_factory,
    restore_scheduler_factories,
    snapshot_scheduler_factories,
)
from dxf_celery.scheduler.slots import SlotManager

__all__ = [
    "BACKGROUND_ROLE",
    "CANCELLED_ERROR",
    "DEFAULT_BATCH_SWITCH_BYTES",
    "LEASE_NAME",
    "Balancer",
    "BaseScheduler",
    "CleanUpFactory",
    "CleanUpRoutine",
    "Extension",
    "Manager",
    "NodeManager",
    "Param",
    "Scheduler",
    "SchedulerFactory",
    "SchedulerIntervals",
    "SlotManager",
    "StorageTaskHandle",
    "TaskHandle",
    "cleanup_finished_tasks",
    "clear_scheduler_factories",
    "filter_by_scope",
    "gc_subtask_history",
    "get_cleanup_routine_factory",
    "get_scheduler_factory",
    "register_cleanup_routine",
    "register_scheduler_factory",
    "restore_scheduler_factories",
    "snapshot_scheduler_factories",
]
