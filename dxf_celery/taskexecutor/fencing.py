"""Self-fencing: an executor that lost touch with the database, or was frozen, re-checks ownership at once.

The node's heartbeat is written by the worker main process, while executors run in pool
processes (prefork children) that share no memory with it; and a child can be frozen, or
lose its connection, on its own. So each executor watches its *own* contact with the
database: :class:`Fence` records the monotonic time of its last successful read (the task
watch, every ``watch_task`` seconds) and notices a wake-up (a monotonic gap between two
turns of the watcher loop, which never sleeps that long). Past ``fence_after`` (half the node
TTL) the executor is *fenced*: the balance check runs at every turn instead of its period, so
a subtask whose row moved away is cancelled as soon as the database answers, and the result
of a subtask is written only after its row was seen still ``running`` here
(:func:`verify_owned`). An idempotent subtask that cannot be verified for
``stop_idempotent_after`` (the node TTL plus ``dxf_node_lost_grace``: the scheduler moves
running subtasks only off a node it judged lost) is cancelled, as another node may run it
by then; a non-idempotent one keeps running until a read shows it moved (the scheduler
never gives it to another node).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dxf_celery.context import Context
from dxf_celery.errors import NodeFencedError
from dxf_celery.proto import Subtask, SubtaskState
from dxf_celery.taskexecutor.interfaces import Extension, TaskTable
from dxf_celery.taskexecutor.ownership import RunningHere, SubtaskMovedAwayError, check_ownership
from dxf_celery.taskexecutor.param import Param

logger = logging.getLogger(__name__)


class Fence:
    """Last successful database contact of one executor, and wake-up detection for its watcher."""

    def __init__(self, fence_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.fence_after = fence_after
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ok = clock()

    def reached(self) -> None:
        """A database read of this executor succeeded."""
        now = self._clock()
        with self._lock:
            self._last_ok = max(self._last_ok, now)

    def silent_for(self) -> float:
        """Seconds since the last successful database read."""
        with self._lock:
            return self._clock() - self._last_ok

    def fenced(self) -> bool:
        return self.silent_for() >= self.fence_after


class FenceCheck:
    """The watcher's fence check for one running subtask (called at every turn of its loop)."""

    def __init__(
        self,
        fence: Fence,
        param: Param,
        extension: Extension,
        subtask: Subtask,
        subtask_ctx: Context,
        here: RunningHere | None = None,
    ) -> None:
        self.fence = fence
        self.here = here
        self.table: TaskTable = param.task_table
        self.extension = extension
        self.exec_id = param.exec_id
        self.stop_idempotent_after = param.intervals.stop_idempotent_after
        self.subtask = subtask
        self.subtask_ctx = subtask_ctx
        self._clock = fence._clock
        self._last_turn = self._clock()
        fence.reached()  # built right after the subtask was claimed (or read): the database answered

    def __call__(self) -> bool:
        """False once the subtask was stopped (the watcher drops the check)."""
        now = self._clock()
        gap, self._last_turn = now - self._last_turn, now
        woke = gap >= self.fence.fence_after
        if not woke and not self.fence.fenced():
            return True
        if woke:
            logger.warning(
                "task %d: executor on %s woke after %.1fs without running (frozen?); re-checking subtask %d",
                self.subtask.task_id,
                self.exec_id,
                gap,
                self.subtask.id,
            )
        owned = verify_owned(self.table, self.exec_id, self.subtask)
        if owned is None:
            if self.fence.silent_for() >= self.stop_idempotent_after and self.extension.is_idempotent(self.subtask):
                logger.warning(
                    "task %d: no database contact for %.1fs; stopping idempotent subtask %d (it may have moved)",
                    self.subtask.task_id,
                    self.fence.silent_for(),
                    self.subtask.id,
                )
                self.subtask_ctx.cancel(NodeFencedError())
                return False
            return True
        self.fence.reached()
        if not owned:
            logger.info(
                "task %d: subtask %d moved away while this node was out of touch; stopping it",
                self.subtask.task_id,
                self.subtask.id,
            )
            self.subtask_ctx.cancel(SubtaskMovedAwayError())
            return False
        # Still ours: settle this node's other rows of the step as the periodic check does.
        return check_ownership(self.table, self.extension, self.exec_id, self.subtask, self.subtask_ctx, self.here)


def verify_owned(table: TaskTable, exec_id: str, subtask: Subtask) -> bool | None:
    """True: the row is ``running`` on this node; False: it moved or was settled; None: cannot tell."""
    try:
        running = table.get_subtasks_by_exec_id_and_step_and_states(
            exec_id, subtask.task_id, subtask.step, SubtaskState.RUNNING
        )
    except Exception as err:
        logger.debug("task %d: cannot verify subtask %d: %s", subtask.task_id, subtask.id, err)
        return None
    return any(s.id == subtask.id for s in running)


def may_finish(table: TaskTable, exec_id: str, subtask: Subtask) -> bool:
    """Before writing a result: False (logged) when the row is known to be no longer running here.

    A subtask that moved while its step code ran on (a frozen node) must not look finished to
    the node that ran it, and must not overwrite what the scheduler wrote meanwhile.
    """
    if verify_owned(table, exec_id, subtask) is not False:
        return True
    logger.warning(
        "task %d: subtask %d returned but its row is no longer running on %s; its result is dropped",
        subtask.task_id,
        subtask.id,
        exec_id,
    )
    return False


__all__ = ["Fence", "FenceCheck", "may_finish", "verify_owned"]
