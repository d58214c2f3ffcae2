"""The executor side of DXF: the node Manager, task executors, step executors and slots."""

from __future__ import annotations

from dxf_celery.proto import NodeResource
from dxf_celery.taskexecutor.execute import (
    BaseStepExecutor,
    StepExecFrameworkInfo,
    StepExecutor,
    SubtaskSummary,
)
from dxf_celery.taskexecutor.interfaces import Extension, TaskExecutor, TaskTable
from dxf_celery.taskexecutor.launcher import (
    Launcher,
    LaunchError,
    RunningExecutor,
    ThreadLauncher,
    build_executor,
    run_executor,
)
from dxf_celery.taskexecutor.manager import Manager
from dxf_celery.taskexecutor.param import (
    MAX_SUBTASK_CHECK_INTERVAL,
    SUBTASK_CHECK_INTERVAL,
    TASK_CHECK_INTERVAL,
    Intervals,
    Param,
)
from dxf_celery.taskexecutor.register import (
    FactoryFn,
    clear_task_executors,
    get_task_executor_factory,
    register_task_type,
    restore_task_executors,
    snapshot_task_executors,
)
from dxf_celery.taskexecutor.slots import SlotManager
from dxf_celery.taskexecutor.task_executor import BaseTaskExecutor, SubtaskMovedAwayError

__all__ = [
    "MAX_SUBTASK_CHECK_INTERVAL",
    "SUBTASK_CHECK_INTERVAL",
    "TASK_CHECK_INTERVAL",
    "BaseStepExecutor",
    "BaseTaskExecutor",
    "Extension",
    "FactoryFn",
    "Intervals",
    "LaunchError",
    "Launcher",
    "Manager",
    "NodeResource",
    "Param",
    "RunningExecutor",
    "SlotManager",
    "StepExecFrameworkInfo",
    "StepExecutor",
    "SubtaskMovedAwayError",
    "SubtaskSummary",
    "TaskExecutor",
    "TaskTable",
    "ThreadLauncher",
    "build_executor",
    "clear_task_executors",
    "get_task_executor_factory",
    "register_task_type",
    "restore_task_executors",
    "run_executor",
    "snapshot_task_executors",
]
