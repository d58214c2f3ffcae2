"""The balance check of a running subtask: is its row still this node's, and what of its other rows here.

The scheduler's balancer moves subtasks between nodes by rewriting their ``exec_id``; the
node that ran one learns it here, from SQL, and stops it without touching the row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from dxf_celery.context import Context
from dxf_celery.errors import DXFError, NonIdempotentSubtaskError
from dxf_celery.proto import Subtask, SubtaskState
from dxf_celery.taskexecutor.interfaces import Extension, TaskTable

logger = logging.getLogger(__name__)


class SubtaskMovedAwayError(DXFError):
    """Cancel cause of a subtask whose row now belongs to another node: its row is left alone."""

    def __init__(self, message: str = "subtask was scheduled away from this node") -> None:
        super().__init__(message)


class RunningHere:
    """The subtasks an executor's lanes hold ``running`` now (parallel subtasks), so the balance
    check tells them from crash leftovers.

    A claim makes a row ``running`` in the database before its id is known here; every claim
    runs inside :meth:`claiming`, and a check that saw a claim start or end while it read the
    rows (:meth:`mark`, :meth:`settled_since`) judges no leftover that round.
    """

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set(ids)
        self._epoch = 0
        self._claiming = 0

    @contextmanager
    def claiming(self) -> Iterator[Callable[[int | None, int | None], None]]:
        """Wrap a finish-and-claim; call the yielded ``swap(finished_id, claimed_id)`` with its result."""
        with self._lock:
            self._claiming += 1
            self._epoch += 1

        def swap(finished: int | None, claimed: int | None) -> None:
            with self._lock:
                if finished is not None:
                    self._ids.discard(finished)
                if claimed is not None:
                    self._ids.add(claimed)

        try:
            yield swap
        finally:
            with self._lock:
                self._claiming -= 1
                self._epoch += 1

    def discard(self, subtask_id: int) -> None:
        """A lane let go of ``subtask_id`` (its row was settled, or is left for a re-run)."""
        with self._lock:
            self._ids.discard(subtask_id)
            self._epoch += 1

    def ids(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._ids)

    def mark(self) -> int:
        """Taken before reading the rows; -1 while a claim is in flight."""
        with self._lock:
            return -1 if self._claiming else self._epoch

    def settled_since(self, mark: int) -> frozenset[int] | None:
        """The ids held now, or None when a claim started or ended since ``mark``."""
        with self._lock:
            if mark < 0 or self._claiming or self._epoch != mark:
                return None
            return frozenset(self._ids)


def check_ownership(
    table: TaskTable,
    extension: Extension,
    exec_id: str,
    current: Subtask,
    subtask_ctx: Context,
    here: RunningHere | None = None,
) -> bool:
    """Stop ``current`` if its row left this node; settle this node's other ``running`` rows of its step.

    Another running row of the same task here is a leftover of a crash (a node runs one
    subtask of a task at a time, or, with parallel subtasks, the ones its lanes hold in
    ``here``): an idempotent one goes back to pending, a non-idempotent one is failed, so the
    task reverts (never run twice). Returns False once ``current`` was stopped.
    """
    mark = here.mark() if here is not None else 0
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
    ours: frozenset[int] = frozenset((current.id,))
    if here is not None:
        siblings = here.settled_since(mark)
        if siblings is None:
            return True  # a lane claimed meanwhile: judge leftovers at the next check
        ours |= siblings
    back_to_pending = []
    for other in running:
        if other.id in ours:
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


__all__ = ["RunningHere", "SubtaskMovedAwayError", "check_ownership"]
