"""The balance check of a running subtask: is its row still this node's, and what of its other rows here.

The scheduler's balancer moves subtasks between nodes by rewriting their ``exec_id``; the
node that ran one learns it here, from SQL, and stops it without touching the row.
"""

from __future__ import annotations

import logging

from dxf_celery.context import Context
from dxf_celery.errors import DXFError, NonIdempotentSubtaskError
from dxf_celery.proto import Subtask, SubtaskState
from dxf_celery.taskexecutor.interfaces import Extension, TaskTable

logger = logging.getLogger(__name__)


class SubtaskMovedAwayError(DXFError):
    """Cancel cause of a subtask whose row now belongs to another node: its row is left alone."""

    def __init__(self, message: str = "subtask was scheduled away from this node") -> None:
        super().__init__(message)


def check_ownership(
    table: TaskTable, extension: Extension, exec_id: str, current: Subtask, subtask_ctx: Context
) -> bool:
    """Stop ``current`` if its row left this node; settle this node's other ``running`` rows of its step.

    Another running row of the same task here is a leftover of a crash (a node runs one
    subtask of a task at a time): an idempotent one goes back to pending, a non-idempotent
    one is failed, so the task reverts (never run twice). Returns False once ``current`` was stopped.
    """
    try:
        running = table.get_subtasks_by_exec_id_and_step_and_states(
            exec_id, current.task_id, current.step, SubtaskState.RUNNING
        )
    except Exception as err:
        logger.debug("task %d: balance check cannot read subtasks: %s", current.task_id, err)
        return True
    if not any(s.id == current.id for s in running):
        logger.info("task %d: subtask %d is no longer running here; stopping it", current.task_id, current.id)
        subtask_ctx.cancel(SubtaskMovedAwayError())
        return False
    back_to_pending = []
    for other in running:
        if other.id == current.id:
            continue
        if not extension.is_idempotent(other):
            try:
                table.update_subtask_state_and_error(
                    exec_id, other.id, SubtaskState.FAILED, NonIdempotentSubtaskError()
                )
            except Exception as err:
                logger.warning("task %d: cannot fail leftover subtask %d: %s", current.task_id, other.id, err)
                return True
            return True
        back_to_pending.append(other)
    if back_to_pending:
        try:
            table.running_subtasks_back_to_pending(back_to_pending)
        except Exception as err:
            logger.warning("task %d: cannot return leftover subtasks to pending: %s", current.task_id, err)
    return True


__all__ = ["SubtaskMovedAwayError", "check_ownership"]
