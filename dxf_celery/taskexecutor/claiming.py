"""The executor's side of the claim protocol (``storage.claims``): one place that claims, and the fingerprint.

A mixin of :class:`~dxf_celery.taskexecutor.task_executor.BaseTaskExecutor`, kept apart so
that module stays small; drain and outcome hooks read ``_finish_and_claim`` as *the* place
a next subtask is claimed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from dxf_celery.context import Context
from dxf_celery.proto import SubtaskClaim, SubtaskFinish, Task
from dxf_celery.taskexecutor import outcome
from dxf_celery.taskexecutor.execute import StepExecutor
from dxf_celery.taskexecutor.interfaces import SubtaskClaims
from dxf_celery.taskexecutor.param import Param

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClaimProtocol:
    """Claims, finishes and the task fingerprint, on the executor's one :class:`SubtaskClaims`."""

    param: Param
    _lock: threading.RLock
    _task: Task
    _claims: SubtaskClaims | None
    outcome: outcome.ExecutorOutcome

    @property
    def _exec_id(self) -> str:
        return self.param.exec_id

    @property
    def _task_id(self) -> int:
        return self._task.id

    def _sql(self, fn: Callable[[], T], what: str) -> T:
        raise NotImplementedError

    def _apply_changes_between_subtasks(self, new: Task) -> bool:
        raise NotImplementedError

    def _prepare_step(self, task: Task) -> tuple[StepExecutor, Context] | None:
        raise NotImplementedError

    def _subtask_claims(self) -> SubtaskClaims:
        if self._claims is None:
            self._claims = self.param.task_table.subtask_claims(self._exec_id, self._task_id)
        return self._claims

    def _close_claims(self) -> None:
        claims, self._claims = self._claims, None
        with contextlib.suppress(Exception):  # a dead connection cannot be closed cleanly
            if claims is not None:
                claims.close()

    def _finish_and_claim(
        self,
        finish: SubtaskFinish | None,
        step: int | None,
        *,
        finished_step: int = 0,
        claims: SubtaskClaims | None = None,
    ) -> SubtaskClaim | None:
        """Write a success (if any, of ``finished_step``) and claim the next pending subtask of ``step``.

        The one place a next subtask is claimed (none when ``step`` is None), in one statement
        or transaction with the previous finish, and so the one place a success is counted in
        the executor's outcome. None when nothing was claimed (none pending here, the task is
        no longer runnable at ``step``, or the write failed). ``claims``: a parallel lane's own
        connection (default: the executor's).
        """
        try:
            if claims is None:
                claims = self._subtask_claims()
            held = claims
            claim = self._sql(lambda: held.finish_and_claim(finish, step), "finish and claim")
        except Exception as err:
            what = f"finish subtask {finish.subtask_id}" if finish is not None else "claim a subtask"
            logger.warning("task %d: cannot %s: %s", self._task_id, what, err)
            if finish is not None:
                self.outcome.ended(finished_step, outcome.ENDED_LEFT)  # still running: the scheduler decides
            return None
        if finish is not None:
            self.outcome.ended(finished_step, outcome.ENDED_SUCCEED)
        return claim

    def _fingerprint_matches(self, claim: SubtaskClaim) -> bool:
        with self._lock:
            task = self._task
        return (claim.task_state, claim.task_concurrency, claim.task_stamp) == (
            task.state,
            task.concurrency,
            task.state_update_time,
        )

    def _take_task_change(self, claim: SubtaskClaim) -> tuple[StepExecutor, Context] | None:
        """The claim says the task changed: read it and apply the change before running the claimed
        subtask; None (that subtask given back to ``pending``) when it cannot run now."""
        table = self.param.task_table
        prepared: tuple[StepExecutor, Context] | None = None
        try:
            new = self._sql(lambda: table.get_task_by_id(self._task_id), "read the task")
        except Exception as err:
            logger.warning("task %d: cannot read the changed task: %s", self._task_id, err)
        else:
            if self._apply_changes_between_subtasks(new):
                prepared = self._prepare_step(new)
            else:
                logger.info("task %d on %s: cannot grow to %d slots, exiting", new.id, self._exec_id, new.concurrency)
        if prepared is None:
            try:
                self._sql(lambda: table.running_subtasks_back_to_pending([claim.subtask]), "give a subtask back")
            except Exception as err:
                logger.warning("task %d: cannot give subtask %d back: %s", self._task_id, claim.subtask.id, err)
        return prepared
