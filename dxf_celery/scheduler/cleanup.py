"""Finished tasks: run their type's cleanup routine, then move them to history; GC old history.

Moving to history is what frees a task's rows from the live tables the scheduler and the
executors poll, so it runs right after a task finishes as well as on its own interval.
"""

from __future__ import annotations

import logging

from dxf_celery.context import Context
from dxf_celery.proto import Task, TaskState
from dxf_celery.scheduler.register import get_cleanup_routine_factory
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)


def cleanup_finished_tasks(ctx: Context, task_manager: TaskManager) -> int:
    """Clean up and transfer every finished task; returns how many moved to history.

    The first routine that raises stops the round (the remaining tasks wait for the next
    one), as in DXF: a routine that fails usually fails for every task of the moment.
    """
    tasks = task_manager.get_tasks_in_states(TaskState.FAILED, TaskState.REVERTED, TaskState.SUCCEED)
    cleaned: list[Task] = []
    for task in tasks:
        if ctx.done():
            break
        factory = get_cleanup_routine_factory(task.type)
        if factory is not None:
            try:
                factory().cleanup(ctx, task)
            except Exception:
                logger.exception("cleanup routine of task %d (%s) failed; retrying later", task.id, task.type)
                break
        cleaned.append(task)
    if not cleaned:
        return 0
    moved = task_manager.transfer_tasks_to_history(cleaned)
    logger.info("moved %d finished tasks to history", moved)
    return moved


def gc_subtask_history(task_manager: TaskManager, keep_seconds: float) -> int:
    """Delete subtask history older than ``keep_seconds``."""
    deleted = task_manager.gc_subtasks(keep_seconds)
    if deleted:
        logger.info("deleted %d subtask history rows older than %.0fs", deleted, keep_seconds)
    return deleted
