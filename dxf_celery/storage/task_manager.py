"""TaskManager: the one object that speaks SQL, composed of one mixin per concern.

Every state write is a compare-and-set on the state the caller expects; task states move
only as :data:`dxf_celery.transitions.TRANSITIONS` allows. Losing the race is a silent
no-op except in ``start_subtask`` and ``modify_task_by_id``, as in DXF. Every executor write
is keyed by ``(subtask id, exec_id)`` so a node that lost a subtask cannot touch it.
"""

from __future__ import annotations

from dxf_celery.storage.base import StorageBase, utcnow
from dxf_celery.storage.executor_subtasks import ExecutorSubtasks
from dxf_celery.storage.history import DEFAULT_SUBTASK_KEEP_SECONDS, History
from dxf_celery.storage.leases import Leases
from dxf_celery.storage.nodes import Nodes
from dxf_celery.storage.scheduler_subtasks import SchedulerSubtasks
from dxf_celery.storage.step_switch import MAX_SUBTASK_BATCH_BYTES, StepSwitch
from dxf_celery.storage.task_transitions import TaskTransitions
from dxf_celery.storage.tasks import MAX_KEY_LENGTH, MAX_SCOPE_LENGTH, MAX_TYPE_LENGTH, TaskReads

__all__ = [
    "DEFAULT_SUBTASK_KEEP_SECONDS",
    "MAX_KEY_LENGTH",
    "MAX_SCOPE_LENGTH",
    "MAX_SUBTASK_BATCH_BYTES",
    "MAX_TYPE_LENGTH",
    "StorageBase",
    "TaskManager",
    "utcnow",
]


class TaskManager(
    TaskReads,
    TaskTransitions,
    StepSwitch,
    ExecutorSubtasks,
    SchedulerSubtasks,
    History,
    Nodes,
    Leases,
):
    """All SQL of dxf-celery: the executor-side ``TaskTable`` and the scheduler side."""
