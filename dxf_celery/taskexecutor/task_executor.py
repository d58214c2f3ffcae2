"""BaseTaskExecutor: DXF's per-task loop on one node, with a watcher thread per running subtask.

Context tree (cancelling a level cancels everything below it)::

    manager ctx
    └── executor ctx        cancel(): pause, preemption, shutdown - rows untouched
        └── step ctx        cancel_running_subtask(): cause CancelSubtaskError - row ends canceled
            └── subtask ctx cancelled when the subtask was moved to another node - row untouched
                └── check ctx   stops the watcher thread when the subtask returns

Cancelling is cooperative; step code still running ``cancel_grace`` seconds after its
subtask ctx was cancelled is interrupted by the watcher (:mod:`.interrupt`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from dxf_celery.context import Context
from dxf_celery.errors import (
    CancelSubtaskError,
    DXFError,
    ExecutorCancelledError,
    NonIdempotentSubtaskError,
    SubtaskNotFoundError,
    SubtaskNotStartedError,
    TaskNotFoundError,
    is_transient_error,
)
from dxf_celery.proto import Subtask, SubtaskState, Task, TaskBase, TaskState
from dxf_celery.retry import run_with_retry
from dxf_celery.taskexecutor import interrupt, outcome
from dxf_celery.taskexecutor.drain import Drain, back_to_pending
from dxf_celery.taskexecutor.execute import StepExecFrameworkInfo, StepExecutor
from dxf_celery.taskexecutor.fencing import Fence, FenceCheck, may_finish
from dxf_celery.taskexecutor.interfaces import Extension
from dxf_celery.taskexecutor.live_changes import apply_live_changes
from dxf_celery.taskexecutor.ownership import SubtaskMovedAwayError, check_ownership
from dxf_celery.taskexecutor.param import Param

__all__ = ["BaseTaskExecutor", "SubtaskMovedAwayError", "TaskExecutorStoppedError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RUNNABLE = (TaskState.RUNNING, TaskState.MODIFYING)
_REVERT_STATES = (TaskState.REVERTING, TaskState.CANCELLING)


class TaskExecutorStoppedError(DXFError):
    """Cancel cause when the executor stops because its task left the running state."""


class BaseTaskExecutor:
    """Implements :class:`~dxf_celery.taskexecutor.interfaces.TaskExecutor` for a task type's Extension."""

    def __init__(self, ctx: Context, task: Task, param: Param, extension: Extension) -> None:
        self.ctx = ctx.child()
        self.param = param
        self.extension = extension
        self._task = task
        self._lock = threading.RLock()
        self._step_exec: StepExecutor | None = None
        self._step_ctx: Context | None = None
        self.drain_state = Drain()  # read by tests and launchers; set through drain()
        self._fence = Fence(param.intervals.fence_after)
        self.outcome = outcome.ExecutorOutcome()  # what this run did and why it stopped (dxf.execute reports it)

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

    @property
    def _exec_id(self) -> str:
        return self.param.exec_id

    @property
    def _task_id(self) -> int:
        return self._task.id

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
            self._clean_step_executor()

    def _run_loop(self) -> tuple[str, str]:
        iv = self.param.intervals
        table = self.param.task_table
        interval = iv.subtask_check
        empty_polls = 0
        # The Manager starts an executor because this node has runnable subtasks: look at once
        # instead of waiting a first interval as DXF does (it costs a whole interval of latency).
        skip_wait = True
        ran_since_empty = False
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
                    self._step_drained(new)
                if empty_polls >= iv.max_idle_polls - 1:
                    return outcome.LOOP_IDLE, ""
                interval = min(iv.subtask_check * 2**empty_polls, iv.max_subtask_check)
                empty_polls += 1
                continue
            interval = iv.subtask_check
            empty_polls = 0
            with self._lock:
                step_exec = self._step_exec
            if step_exec is not None and step_exec.step != new.step:
                self._clean_step_executor()
                step_exec = None
            if step_exec is None:
                try:
                    step_exec = self._create_step_executor(new)
                except Exception:
                    continue
            with self._lock:
                step_ctx = self._step_ctx
            if step_ctx is None or step_ctx.done():
                # The task is being reverted: no new subtask may start under this step.
                continue
            if self.drain_state.requested:
                return outcome.LOOP_DRAINED, ""  # draining: the subtask just found is left for later (still pending)
            ran_since_empty = True
            if self._run_subtask(step_exec, step_ctx, subtask):
                skip_wait = True

    def _step_drained(self, task: Task) -> None:
        hook = self.param.on_step_drained
        if hook is None:
            return
        try:
            hook(task)
        except Exception:  # a wake-up is only latency: never stop the executor for it
            logger.exception("task %d: step-drained hook failed", self._task_id)

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
        with self._lock:
            self._step_exec = step_exec
            self._step_ctx = self.ctx.child()
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

    def _run_subtask(self, step_exec: StepExecutor, step_ctx: Context, subtask: Subtask) -> bool:
        """Run one subtask and record its outcome; True when it succeeded."""
        table = self.param.task_table
        if subtask.state == SubtaskState.RUNNING:
            if not self.extension.is_idempotent(subtask):
                logger.warning("task %d: subtask %d was left running and is not idempotent", self._task_id, subtask.id)
                self._set_subtask_state(subtask.id, SubtaskState.FAILED, NonIdempotentSubtaskError())
                return self.outcome.ended(subtask.step, outcome.ENDED_FAILED)
        else:
            try:
                self._sql(lambda: table.start_subtask(subtask.id, self._exec_id), "start_subtask")
            except SubtaskNotFoundError:
                return False  # moved to another node meanwhile: not ours any more
            except Exception as err:
                logger.warning("task %d: cannot start subtask %d: %s", self._task_id, subtask.id, err)
                return False
            subtask.state = SubtaskState.RUNNING

        subtask_ctx = step_ctx.child()
        check_ctx = subtask_ctx.child()
        try:
            step_exec.reset_summary()
        except Exception:
            logger.exception("task %d: reset_summary failed", self._task_id)
        returned = threading.Event()
        watcher = threading.Thread(
            target=self._watch_subtask,
            args=(step_exec, subtask, subtask_ctx, check_ctx, threading.get_ident(), returned),
            name=f"dxf-watch-{self._task_id}-{subtask.id}",
            daemon=True,
        )
        watcher.start()
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
            returned.set()
            check_ctx.cancel()
            watcher.join()
        self._persist_summary(step_exec, subtask.id, final=True)

        if error is None:
            if not may_finish(table, self._exec_id, subtask):
                return self.outcome.ended(subtask.step, outcome.ENDED_MOVED)
            try:
                self._sql(lambda: table.finish_subtask(self._exec_id, subtask.id, subtask.meta), "finish_subtask")
            except Exception as err:
                logger.warning("task %d: cannot finish subtask %d: %s", self._task_id, subtask.id, err)
                return False
            return self.outcome.ended(subtask.step, outcome.ENDED_SUCCEED)
        if isinstance(error, SubtaskNotStartedError) and not isinstance(subtask_ctx.cause, CancelSubtaskError):
            back_to_pending(lambda: self._sql(lambda: table.subtask_back_to_pending(self._exec_id, subtask.id), "back"))
            return self.outcome.ended(subtask.step, outcome.ENDED_LEFT)
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
        return self.outcome.ended(subtask.step, outcome.how_ended(subtask_ctx, self.is_retryable_error(error)))

    def _set_subtask_state(self, subtask_id: int, state: SubtaskState, err: BaseException | None) -> None:
        table = self.param.task_table
        try:
            self._sql(
                lambda: table.update_subtask_state_and_error(self._exec_id, subtask_id, state, err),
                f"mark subtask {state.value}",
            )
        except Exception as exc:
            logger.warning("task %d: cannot mark subtask %d %s: %s", self._task_id, subtask_id, state.value, exc)

    # ------------------------------------------------------------------ watcher thread

    def _watch_subtask(
        self,
        step_exec: StepExecutor,
        subtask: Subtask,
        subtask_ctx: Context,
        check_ctx: Context,
        runner: int,
        returned: threading.Event,
    ) -> None:
        """One thread per running subtask: the periodic checks, then the cancel deadline if it was cancelled."""
        self._run_checks(step_exec, subtask, subtask_ctx, check_ctx)
        if subtask_ctx.done() and not returned.is_set():
            what = f"task {self._task_id}: subtask {subtask.id}"
            interrupt.enforce_cancel(runner, subtask.id, returned, self.param.intervals.cancel_grace, what, subtask_ctx)

    def _run_checks(self, step_exec: StepExecutor, subtask: Subtask, subtask_ctx: Context, check_ctx: Context) -> None:
        """Task state, balance, summary and live modification checks until ``check_ctx`` is cancelled."""
        iv = self.param.intervals
        now = time.monotonic()
        due = {
            "fence": now + iv.watch_task,
            "watch": now + iv.watch_task,
            "balance": now + iv.check_balance,
            "summary": now + iv.update_summary,
            "modify": now + iv.detect_modify,
        }
        periods = {
            "fence": iv.watch_task,
            "watch": iv.watch_task,
            "balance": iv.check_balance,
            "summary": iv.update_summary,
            "modify": iv.detect_modify,
        }
        checks: dict[str, Callable[[], bool]] = {
            "fence": FenceCheck(self._fence, self.param, self.extension, subtask, subtask_ctx),
            "watch": lambda: self._watch_task_state(),
            "balance": lambda: self._check_balance(subtask, subtask_ctx),
            "summary": lambda: self._persist_summary(step_exec, subtask.id, final=False),
            "modify": lambda: self._detect_modification(step_exec, subtask_ctx),
        }
        while True:
            timeout = max(0.0, min(due.values()) - time.monotonic())
            if check_ctx.wait(timeout):
                return
            now = time.monotonic()
            for name, when in list(due.items()):
                if now < when:
                    continue
                try:
                    keep = checks[name]()
                except Exception:
                    logger.exception("task %d: %s check failed", self._task_id, name)
                    keep = True
                if keep:
                    due[name] = time.monotonic() + periods[name]
                else:
                    del due[name]
                if check_ctx.done():
                    return
            if not due:
                check_ctx.wait()
                return

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
        return check_ownership(self.param.task_table, self.extension, self._exec_id, current, subtask_ctx)

    def _persist_summary(self, step_exec: StepExecutor, subtask_id: int, *, final: bool) -> bool:
        try:
            summary = step_exec.realtime_summary()
        except Exception:
            logger.exception("task %d: realtime_summary failed", self._task_id)
            return True
        if summary is None:
            return True
        summary.update()
        text = summary.to_json()
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
