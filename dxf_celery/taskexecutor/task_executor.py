"""BaseTaskExecutor: DXF's per-task loop on one node, with one watcher thread per executor.

The task is read only when the loop wakes up; then subtasks run back to back, each finish
written with the next claim (``_finish_and_claim``: the one place a subtask is claimed),
which is guarded by the task's state and step and returns its fingerprint. What a
subtask's end means is decided in one place (``_record_outcome``).

Context tree (cancelling a level cancels everything below it)::

    manager ctx
    └── executor ctx        cancel(): pause, preemption, shutdown - rows untouched
        └── step ctx        cancel_running_subtask(): cause CancelSubtaskError - row ends canceled
            └── subtask ctx cancelled when the subtask was moved to another node - row untouched

Cancelling is cooperative; step code still running ``cancel_grace`` seconds after its
subtask ctx was cancelled is interrupted by the watcher (:mod:`.interrupt`, :mod:`.watcher`).
A type that opts in to parallel subtasks runs them in lanes (:mod:`.parallel`), each subtask
ctx still a child of the one step ctx.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from dxf_celery.context import Context
from dxf_celery.errors import (
    CancelSubtaskError,
    DXFError,
    ExecutorCancelledError,
    NonIdempotentSubtaskError,
    SubtaskNotStartedError,
    TaskNotFoundError,
    is_transient_error,
)
from dxf_celery.proto import Subtask, SubtaskFinish, SubtaskState, Task, TaskBase, TaskState
from dxf_celery.retry import run_with_retry
from dxf_celery.taskexecutor import interrupt, outcome, parallel
from dxf_celery.taskexecutor.claiming import ClaimProtocol
from dxf_celery.taskexecutor.drain import Drain, back_to_pending
from dxf_celery.taskexecutor.execute import StepExecFrameworkInfo, StepExecutor
from dxf_celery.taskexecutor.fencing import Fence, FenceCheck
from dxf_celery.taskexecutor.interfaces import Extension, SubtaskClaims
from dxf_celery.taskexecutor.live_changes import apply_live_changes
from dxf_celery.taskexecutor.ownership import RunningHere, SubtaskMovedAwayError, check_ownership
from dxf_celery.taskexecutor.param import Param
from dxf_celery.taskexecutor.watcher import Watch, Watcher

__all__ = ["BaseTaskExecutor", "SubtaskMovedAwayError", "TaskExecutorStoppedError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RUNNABLE = (TaskState.RUNNING, TaskState.MODIFYING)
_REVERT_STATES = (TaskState.REVERTING, TaskState.CANCELLING)


class TaskExecutorStoppedError(DXFError):
    """Cancel cause when the executor stops because its task left the running state."""


class BaseTaskExecutor(ClaimProtocol):
    """Implements :class:`~dxf_celery.taskexecutor.interfaces.TaskExecutor` for a task type's Extension."""

    def __init__(self, ctx: Context, task: Task, param: Param, extension: Extension) -> None:
        self.ctx = ctx.child()
        self.param = param
        self.extension = extension
        self._task = task
        self._lock = threading.RLock()
        self._step_exec: StepExecutor | None = None
        self._step_ctx: Context | None = None
        self._claims: SubtaskClaims | None = None
        self._here: RunningHere | None = None  # the lanes' running subtasks, while parallel (:mod:`.parallel`)
        self.drain_state = Drain()  # read by tests and launchers; set through drain()
        self._fence = Fence(param.intervals.fence_after)
        self.outcome = outcome.ExecutorOutcome()  # what this run did and why it stopped (dxf.execute reports it)
        self._watcher = Watcher.for_intervals(
            f"dxf-watch-{task.id}",
            param.intervals,
            watch=lambda w: self._watch_task_state(),
            balance=lambda w: self._check_balance(w.subtask, w.subtask_ctx),
            summary=lambda w: self._persist_summary(w.step_exec, w.subtask.id, final=False),
            modify=lambda w: (
                self._detect_modification(w.step_exec, w.subtask_ctx)
                if self._here is None
                else parallel.live_meta_to_lanes(self, self._watcher.live())
            ),
            fence=lambda w: w.fence() if w.fence is not None else True,
            enforce=self._enforce_cancel,
        )

    # ------------------------------------------------------------------ TaskExecutor API

    def init(self, ctx: Context) -> None:
        return None

    def get_task_base(self) -> TaskBase:
        with self._lock:
            return self._task.base()

    @property
    def task(self) -> Task:
        """The executor's cached copy of its task (read only)."""
        with self._lock:
            return self._task

    def cancel(self) -> None:
        self.ctx.cancel()

    def cancel_running_subtask(self) -> None:
        with self._lock:
            step_ctx = self._step_ctx
        if step_ctx is not None:
            step_ctx.cancel(CancelSubtaskError())

    def drain(self) -> None:
        """Finish the running subtask, claim no more; cancelled past ``drain_grace`` (:mod:`.drain`)."""
        self.drain_state.request(self.ctx, self.param.intervals.drain_grace, f"task {self._task_id} on {self._exec_id}")

    def close(self) -> None:
        self.cancel()

    def is_retryable_error(self, err: BaseException) -> bool:
        return self.extension.is_retryable_error(err)

    # ------------------------------------------------------------------ helpers

    # ``_exec_id`` and ``_task_id`` come from ClaimProtocol.

    def _sql(self, fn: Callable[[], T], what: str) -> T:
        iv = self.param.intervals
        return run_with_retry(
            fn,
            ctx=self.ctx,
            max_retry=iv.sql_retry_times,
            backoff=iv.sql_backoff(),
            is_retryable=is_transient_error,
            what=f"{what} (task {self._task_id})",
        )

    def _fail_one_subtask(self, err: BaseException) -> None:
        """Fatal error: fail one subtask of this node so the scheduler reverts the task."""
        logger.error("task %d on %s: fatal error, failing a subtask: %s", self._task_id, self._exec_id, err)
        try:
            table = self.param.task_table
            self._sql(lambda: table.fail_subtask(self._exec_id, self._task_id, err), "fail_subtask")
        except Exception:
            logger.exception("task %d: could not fail a subtask", self._task_id)

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        self._watcher.start()
        try:
            self.outcome.stopped(*self._run_loop())
        except ExecutorCancelledError as err:
            # A forced interruption that landed just as the step code returned: the executor
            # was cancelled anyway, so it stops; the subtask row is left for the scheduler.
            logger.info("task %d on %s: executor interrupted: %s", self._task_id, self._exec_id, err)
        except Exception as err:
            # DXF recovers a panic in Run by failing one subtask with its text.
            logger.exception("task %d on %s: executor loop crashed", self._task_id, self._exec_id)
            self._fail_one_subtask(err)
        finally:
            self._watcher.stop()
            self._clean_step_executor()
            self._close_claims()

    def _run_loop(self) -> tuple[str, str]:
        """The slow path, once per wake-up: read the task, find work, then run subtasks back to back."""
        iv = self.param.intervals
        table = self.param.task_table
        interval = iv.subtask_check
        empty_polls = 0
        # The Manager starts an executor because this node has runnable subtasks: look at once
        # instead of waiting a first interval as DXF does (it costs a whole interval of latency).
        skip_wait = True
        ran_since_empty = False
        #: Pause of the next empty poll while it is below ``subtask_check`` (after a step's end).
        quick = iv.subtask_check
        while True:
            if self.ctx.done() or self.drain_state.requested:
                return outcome.loop_stop(self.ctx)
            if not skip_wait and self.ctx.wait(interval):
                return outcome.loop_stop(self.ctx)
            skip_wait = False
            try:
                new = table.get_task_by_id(self._task_id)
            except TaskNotFoundError:
                return outcome.LOOP_GONE, ""
            except Exception as err:
                logger.warning("task %d: cannot read the task: %s", self._task_id, err)
                continue
            if not self._apply_changes_between_subtasks(new):
                logger.info("task %d on %s: cannot grow to %d slots, exiting", new.id, self._exec_id, new.concurrency)
                return outcome.LOOP_NO_ROOM, f"cannot grow to {new.concurrency} slots"
            if new.state not in _RUNNABLE:
                return outcome.LOOP_TASK_STATE, new.state.value
            try:
                subtask = table.get_first_subtask_in_states(
                    self._exec_id, new.id, new.step, SubtaskState.PENDING, SubtaskState.RUNNING
                )
            except Exception as err:
                logger.warning("task %d: cannot read subtasks: %s", self._task_id, err)
                continue
            if subtask is None:
                if ran_since_empty:
                    ran_since_empty = False
                    if self._step_drained(new):
                        # The scheduler was woken for this step's end: its next step (or the
                        # task's end, which lets this executor go) is about one pass away.
                        quick = iv.step_done_check
                if quick < iv.subtask_check:
                    interval, quick = quick, quick * 2  # not an idle poll: the step just ended
                    continue
                if empty_polls >= iv.max_idle_polls - 1:
                    return outcome.LOOP_IDLE, ""
                interval = min(iv.subtask_check * 2**empty_polls, iv.max_subtask_check)
                empty_polls += 1
                continue
            interval = iv.subtask_check
            empty_polls = 0
            quick = iv.subtask_check
            prepared = self._prepare_step(new)
            if prepared is None:
                continue
            step_exec, step_ctx = prepared
            if self.drain_state.requested:
                return outcome.LOOP_DRAINED, ""  # draining: the subtask just found is left for later (still pending)
            ran_since_empty = True
            if subtask.state == SubtaskState.PENDING:
                claim = self._finish_and_claim(None, new.step)
                if claim is None:
                    continue
                subtask = claim.subtask
            elif not self.extension.is_idempotent(subtask):
                logger.warning("task %d: subtask %d was left running and is not idempotent", self._task_id, subtask.id)
                self._set_subtask_state(subtask.id, SubtaskState.FAILED, NonIdempotentSubtaskError())
                self.outcome.ended(subtask.step, outcome.ENDED_FAILED)
                continue
            skip_wait = self._run_subtasks(step_exec, step_ctx, subtask)

    def _step_drained(self, task: Task) -> bool:
        """Tell the hook this node ran out of subtasks of the step; True when it woke a scheduler."""
        hook = self.param.on_step_drained
        if hook is None:
            return False
        try:
            return bool(hook(task))
        except Exception:  # a wake-up is only latency: never stop the executor for it
            logger.exception("task %d: step-drained hook failed", self._task_id)
            return False

    def _prepare_step(self, task: Task) -> tuple[StepExecutor, Context] | None:
        """The step executor of ``task.step`` and its context; None when no subtask may start now."""
        with self._lock:
            step_exec = self._step_exec
        if step_exec is not None and step_exec.step != task.step:
            self._clean_step_executor()
            step_exec = None
        if step_exec is None:
            try:
                step_exec = self._create_step_executor(task)
            except Exception:
                return None
        with self._lock:
            step_ctx = self._step_ctx
        if step_ctx is None or step_ctx.done():
            # The task is being reverted: no new subtask may start under this step.
            return None
        return step_exec, step_ctx

    def _run_subtasks(self, step_exec: StepExecutor, step_ctx: Context, subtask: Subtask) -> bool:
        """The fast path: run ``subtask`` and the ones claimed after it without reading the task.

        True after a success (look again at once), False after any other outcome.
        """
        lanes = parallel.lane_count(self.extension, self.task)
        if lanes > 1:
            return parallel.ParallelBlock(self, step_ctx, self.task, lanes).run(step_exec, subtask)
        while True:
            finish = self._run_subtask(step_exec, step_ctx, subtask)
            if finish is None:
                return False
            may_claim = not self.ctx.done() and not step_ctx.done() and not self.drain_state.requested
            claim = self._finish_and_claim(finish, subtask.step if may_claim else None, finished_step=subtask.step)
            if claim is None:
                return True
            if not self._fingerprint_matches(claim):
                prepared = self._take_task_change(claim)
                if prepared is None:
                    return False  # the slow path reads the task again and decides
                step_exec, step_ctx = prepared
            subtask = claim.subtask

    def _apply_changes_between_subtasks(self, new: Task) -> bool:
        """Apply meta/concurrency changes seen by the loop; False when growing is impossible."""
        with self._lock:
            old = self._task
            step_exec = self._step_exec
            step_ctx = self._step_ctx
        if new.meta != old.meta and step_exec is not None and step_exec.step == new.step:
            try:
                step_exec.task_meta_modified(step_ctx or self.ctx, new.meta)
            except Exception as err:
                logger.info("task %d: step executor cannot take the new meta live (%s); recreating it", new.id, err)
                self._clean_step_executor()
                step_exec = None
        if new.concurrency != old.concurrency:
            if not self.param.slot_manager.exchange(new):
                return False
            if step_exec is not None:
                step_exec.resource = self.param.node_resource.step_resource(new)
        with self._lock:
            self._task = new
        return True

    # ------------------------------------------------------------------ step executors

    def _create_step_executor(self, task: Task) -> StepExecutor:
        try:
            step_exec = self.extension.get_step_executor(task)
        except Exception as err:
            self._fail_one_subtask(err)
            raise
        step_exec.step = task.step
        step_exec.resource = self.param.node_resource.step_resource(task)
        if isinstance(step_exec, StepExecFrameworkInfo):
            step_exec.set_checkpoint_store(self.param.task_table)
        try:
            step_exec.init(self.ctx)
        except Exception as err:
            if self.is_retryable_error(err):
                logger.warning("task %d: step executor init failed, will retry: %s", task.id, err)
            else:
                self._fail_one_subtask(err)
            raise
        step_ctx = self.ctx.child()
        step_ctx.on_cancel(lambda cause: self._watcher.kick())  # the running subtask's deadline starts now
        with self._lock:
            self._step_exec, self._step_ctx = step_exec, step_ctx
        return step_exec

    def _clean_step_executor(self) -> None:
        with self._lock:
            step_exec, step_ctx = self._step_exec, self._step_ctx
            self._step_exec = self._step_ctx = None
        if step_exec is not None:
            try:
                step_exec.cleanup(self.ctx)
            except Exception:
                logger.exception("task %d: step executor cleanup failed", self._task_id)
        if step_ctx is not None:
            step_ctx.cancel()

    # ------------------------------------------------------------------ one subtask

    def _run_subtask(self, step_exec: StepExecutor, step_ctx: Context, subtask: Subtask) -> SubtaskFinish | None:
        """Run one subtask this node holds ``running``; its success to write, or None."""
        subtask_ctx = step_ctx.child()
        try:
            step_exec.reset_summary()
        except Exception:
            logger.exception("task %d: reset_summary failed", self._task_id)
        watch = self._watcher.begin(step_exec, subtask, subtask_ctx)
        watch.fence = FenceCheck(self._fence, self.param, self.extension, subtask, subtask_ctx, self._here)
        error: BaseException | None = None
        try:
            with interrupt.step_code(subtask.id):
                step_exec.run_subtask(subtask_ctx, subtask)
        except ExecutorCancelledError as err:
            # Forced by the watcher: only ever raised after subtask_ctx was cancelled.
            error = err
        except Exception as err:
            error = err
        finally:
            interrupt.leave_step_code()
            self._watcher.end(watch)
        return self._record_outcome(step_exec, subtask, subtask_ctx, error)

    def _record_outcome(
        self, step_exec: StepExecutor, subtask: Subtask, subtask_ctx: Context, error: BaseException | None
    ) -> SubtaskFinish | None:
        """What the end of a subtask means for its row: the one place that decides it.

        A success is returned, to be written with the next claim (:meth:`_finish_and_claim`);
        every other outcome is written (or deliberately not) here.
        """
        if error is None:
            # Written only while the row is still running here (the finish statement's guard).
            return SubtaskFinish(subtask.id, subtask.meta, self._summary_text(step_exec))
        self._persist_summary(step_exec, subtask.id, final=True)
        table = self.param.task_table
        if isinstance(error, SubtaskNotStartedError) and not isinstance(subtask_ctx.cause, CancelSubtaskError):
            back_to_pending(lambda: self._sql(lambda: table.subtask_back_to_pending(self._exec_id, subtask.id), "back"))
            self.outcome.ended(subtask.step, outcome.ENDED_LEFT)
            return None
        if subtask_ctx.done():
            if isinstance(subtask_ctx.cause, CancelSubtaskError):
                self._set_subtask_state(subtask.id, SubtaskState.CANCELED, None)
            else:
                logger.info(
                    "task %d: subtask %d stopped (%s); row left as it is", self._task_id, subtask.id, subtask_ctx.cause
                )
        elif self.is_retryable_error(error):
            logger.warning(
                "task %d: subtask %d hit a retryable error, will re-run: %s", self._task_id, subtask.id, error
            )
        else:
            logger.warning("task %d: subtask %d failed: %s", self._task_id, subtask.id, error)
            self._set_subtask_state(subtask.id, SubtaskState.FAILED, error)
        self.outcome.ended(subtask.step, outcome.how_ended(subtask_ctx, self.is_retryable_error(error)))
        return None

    def _set_subtask_state(self, subtask_id: int, state: SubtaskState, err: BaseException | None) -> None:
        table = self.param.task_table
        try:
            self._sql(
                lambda: table.update_subtask_state_and_error(self._exec_id, subtask_id, state, err),
                f"mark subtask {state.value}",
            )
        except Exception as exc:
            logger.warning("task %d: cannot mark subtask %d %s: %s", self._task_id, subtask_id, state.value, exc)

    # ------------------------------------------------------------------ what the watcher runs

    def _enforce_cancel(self, w: Watch) -> None:
        what = f"task {self._task_id}: subtask {w.subtask.id}"
        interrupt.enforce_cancel(
            w.runner, w.subtask.id, w.returned, self.param.intervals.cancel_grace, what, w.subtask_ctx
        )

    def _watch_task_state(self) -> bool:
        """Derive cancellation from SQL, so it works where no signal can reach the executor."""
        try:
            base = self.param.task_table.get_task_base_by_id(self._task_id)
        except TaskNotFoundError:
            self.cancel()
            return False
        except Exception as err:
            logger.debug("task %d: cannot read task state: %s", self._task_id, err)
            return True
        self._fence.reached()
        if base.state in _REVERT_STATES:
            self.cancel_running_subtask()
        elif base.state not in _RUNNABLE:
            self.ctx.cancel(TaskExecutorStoppedError(f"task {base.id} is {base.state.value}"))
        return True

    def _check_balance(self, current: Subtask, subtask_ctx: Context) -> bool:
        return check_ownership(self.param.task_table, self.extension, self._exec_id, current, subtask_ctx, self._here)

    def _summary_text(self, step_exec: StepExecutor) -> str | None:
        try:
            summary = step_exec.realtime_summary()
        except Exception:
            logger.exception("task %d: realtime_summary failed", self._task_id)
            return None
        if summary is None:
            return None
        summary.update()
        return summary.to_json()

    def _persist_summary(self, step_exec: StepExecutor, subtask_id: int, *, final: bool) -> bool:
        text = self._summary_text(step_exec)
        if text is None:
            return True
        table = self.param.task_table
        try:
            if final:
                self._sql(lambda: table.update_subtask_summary(subtask_id, text), "update_subtask_summary")
            else:
                table.update_subtask_summary(subtask_id, text)
        except Exception as err:
            logger.warning("task %d: cannot persist the summary of subtask %d: %s", self._task_id, subtask_id, err)
        return True

    def _detect_modification(self, step_exec: StepExecutor, subtask_ctx: Context) -> bool:
        """Apply concurrency and meta changes while a subtask runs (each independently)."""
        try:
            new = self.param.task_table.get_task_by_id(self._task_id)
        except Exception as err:
            logger.debug("task %d: cannot read task for modification: %s", self._task_id, err)
            return True
        with self._lock:
            old = self._task
        param = self.param
        applied = apply_live_changes(step_exec, subtask_ctx, old, new, param.slot_manager, param.node_resource)
        if applied is not old:
            with self._lock:
                if self._task is old:
                    self._task = applied
        return True
