"""dxf-celery: TiDB's Distributed eXecution Framework (multi-step distributed tasks) as a Celery extension.

The public names below are loaded on first access, so ``import dxf_celery`` stays cheap
(no SQLAlchemy, no Celery) for code that only needs, say, the states or the errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # the Celery extension
    "DXF": "dxf_celery.app",
    "TaskClient": "dxf_celery.client",
    "DXFSettings": "dxf_celery.settings",
    "DXFConfigError": "dxf_celery.settings",
    # data
    "Task": "dxf_celery.proto",
    "TaskBase": "dxf_celery.proto",
    "Subtask": "dxf_celery.proto",
    "SubtaskBase": "dxf_celery.proto",
    "TaskState": "dxf_celery.proto",
    "SubtaskState": "dxf_celery.proto",
    "ExtraParams": "dxf_celery.proto",
    "ModifyParam": "dxf_celery.proto",
    "NodeResource": "dxf_celery.proto",
    "STEP_INIT": "dxf_celery.proto",
    "STEP_DONE": "dxf_celery.proto",
    "Context": "dxf_celery.context",
    # errors
    "DXFError": "dxf_celery.errors",
    "InvalidTaskError": "dxf_celery.errors",
    "TaskNotFoundError": "dxf_celery.errors",
    "TaskAlreadyExistsError": "dxf_celery.errors",
    "TaskStateNotAllowedError": "dxf_celery.errors",
    "TaskChangedError": "dxf_celery.errors",
    "SubtaskNotFoundError": "dxf_celery.errors",
    "UnstableSubtasksError": "dxf_celery.errors",
    "NonIdempotentSubtaskError": "dxf_celery.errors",
    "CancelSubtaskError": "dxf_celery.errors",
    "ExecutorCancelledError": "dxf_celery.errors",
    "SubtaskNotStartedError": "dxf_celery.errors",
    "DrainGraceExpiredError": "dxf_celery.errors",
    "NodeFencedError": "dxf_celery.errors",
    "UnknownTaskTypeError": "dxf_celery.errors",
    "StorageUnavailableError": "dxf_celery.errors",
    "TaskFailedError": "dxf_celery.errors",
    # executor side
    "register_task_type": "dxf_celery.taskexecutor",
    "BaseTaskExecutor": "dxf_celery.taskexecutor",
    "BaseStepExecutor": "dxf_celery.taskexecutor",
    "StepExecutor": "dxf_celery.taskexecutor",
    "SubtaskSummary": "dxf_celery.taskexecutor",
    "TaskExecutorExtension": "dxf_celery.taskexecutor:Extension",
    # scheduler side
    "BaseScheduler": "dxf_celery.scheduler",
    "SchedulerExtension": "dxf_celery.scheduler:Extension",
    "register_scheduler_factory": "dxf_celery.scheduler",
    "register_cleanup_routine": "dxf_celery.scheduler",
    # storage
    "TaskManager": "dxf_celery.storage",
    "migrate": "dxf_celery.storage",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from dxf_celery.app import DXF as DXF
    from dxf_celery.client import TaskClient as TaskClient
    from dxf_celery.context import Context as Context
    from dxf_celery.errors import (
        CancelSubtaskError as CancelSubtaskError,
    )
    from dxf_celery.errors import (
        DrainGraceExpiredError as DrainGraceExpiredError,
    )
    from dxf_celery.errors import (
        DXFError as DXFError,
    )
    from dxf_celery.errors import (
        ExecutorCancelledError as ExecutorCancelledError,
    )
    from dxf_celery.errors import (
        InvalidTaskError as InvalidTaskError,
    )
    from dxf_celery.errors import (
        NodeFencedError as NodeFencedError,
    )
    from dxf_celery.errors import (
        NonIdempotentSubtaskError as NonIdempotentSubtaskError,
    )
    from dxf_celery.errors import (
        StorageUnavailableError as StorageUnavailableError,
    )
    from dxf_celery.errors import (
        SubtaskNotFoundError as SubtaskNotFoundError,
    )
    from dxf_celery.errors import (
        SubtaskNotStartedError as SubtaskNotStartedError,
    )
    from dxf_celery.errors import (
        TaskAlreadyExistsError as TaskAlreadyExistsError,
    )
    from dxf_celery.errors import (
        TaskChangedError as TaskChangedError,
    )
    from dxf_celery.errors import (
        TaskFailedError as TaskFailedError,
    )
    from dxf_celery.errors import (
        TaskNotFoundError as TaskNotFoundError,
    )
    from dxf_celery.errors import (
        TaskStateNotAllowedError as TaskStateNotAllowedError,
    )
    from dxf_celery.errors import (
        UnknownTaskTypeError as UnknownTaskTypeError,
    )
    from dxf_celery.errors import (
        UnstableSubtasksError as UnstableSubtasksError,
    )
    from dxf_celery.proto import (
        STEP_DONE as STEP_DONE,
    )
    from dxf_celery.proto import (
        STEP_INIT as STEP_INIT,
    )
    from dxf_celery.proto import (
        ExtraParams as ExtraParams,
    )
    from dxf_celery.proto import (
        ModifyParam as ModifyParam,
    )
    from dxf_celery.proto import (
        NodeResource as NodeResource,
    )
    from dxf_celery.proto import (
        Subtask as Subtask,
    )
    from dxf_celery.proto import (
        SubtaskBase as SubtaskBase,
    )
    from dxf_celery.proto import (
        SubtaskState as SubtaskState,
    )
    from dxf_celery.proto import (
        Task as Task,
    )
    from dxf_celery.proto import (
        TaskBase as TaskBase,
    )
    from dxf_celery.proto import (
        TaskState as TaskState,
    )
    from dxf_celery.scheduler import BaseScheduler as BaseScheduler
    from dxf_celery.scheduler import Extension as SchedulerExtension  # noqa: F401
    from dxf_celery.scheduler import register_cleanup_routine as register_cleanup_routine
    from dxf_celery.scheduler import register_scheduler_factory as register_scheduler_factory
    from dxf_celery.settings import DXFConfigError as DXFConfigError
    from dxf_celery.settings import DXFSettings as DXFSettings
    from dxf_celery.storage import TaskManager as TaskManager
    from dxf_celery.storage import migrate as migrate
    from dxf_celery.taskexecutor import BaseStepExecutor as BaseStepExecutor
    from dxf_celery.taskexecutor import BaseTaskExecutor as BaseTaskExecutor
    from dxf_celery.taskexecutor import Extension as TaskExecutorExtension  # noqa: F401
    from dxf_celery.taskexecutor import StepExecutor as StepExecutor
    from dxf_celery.taskexecutor import SubtaskSummary as SubtaskSummary
    from dxf_celery.taskexecutor import register_task_type as register_task_type


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'dxf_celery' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
