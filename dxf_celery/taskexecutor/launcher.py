"""Where a started task executor runs: a thread here, a Celery pool process in ``dxf_celery.worker``.

The node Manager only talks to a :class:`RunningExecutor` (its grip on an executor started
somewhere), never to the executor object, so the in-process path and the Celery path share
every line of the Manager. Both build the executor with :func:`build_executor`; the Celery
task ``dxf.execute`` runs it through :func:`run_executor`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from dxf_celery.context import Context
from dxf_celery.errors import DXFError, UnknownTaskTypeError, is_transient_error
from dxf_celery.proto import Task
from dxf_celery.retry import run_with_retry
from dxf_celery.taskexecutor.interfaces import TaskExecutor
from dxf_celery.taskexecutor.param import Param
from dxf_celery.taskexecutor.register import get_task_executor_factory

logger = logging.getLogger(__name__)


class LaunchError(DXFError):
    """The executor could not be started; the Manager frees its slots and retries on a later pass."""


class RunningExecutor(Protocol):
    """The Manager's grip on a started executor."""

    task_id: int

    def cancel(self) -> None:
        """Pause / preemption / shutdown: the running subtask's row is left untouched."""

    def cancel_running_subtask(self) -> None:
        """The task is reverting: the running subtask ends ``canceled``."""

    def drain(self) -> None:
        """Preemption / warm shutdown: finish the running subtask, claim no more (idempotent, may be resent)."""

    def done(self) -> bool:
        """``run()`` has returned (or the process running it died)."""

    def close(self) -> None:
        """After ``done()``: release what the executor holds."""


def drain_executor(running: RunningExecutor | TaskExecutor) -> None:
    """Drain ``running``; one without ``drain`` (written before it existed) is cancelled instead."""
    drain = getattr(running, "drain", None)
    if drain is not None:
        drain()
    else:
        running.cancel()


class Launcher(Protocol):
    def launch(self, ctx: Context, task: Task, param: Param) -> RunningExecutor:
        """Start an executor for ``task``; raising makes the Manager free the task's slots."""


def _fail_subtask(task: Task, param: Param, err: BaseException) -> None:
    iv = param.intervals
    logger.error("task %d (%s) cannot run on %s: %s", task.id, task.type, param.exec_id, err)
    try:
        run_with_retry(
            lambda: param.task_table.fail_subtask(param.exec_id, task.id, err),
            max_retry=iv.sql_retry_times,
            backoff=iv.sql_backoff(),
            is_retryable=is_transient_error,
            what=f"fail_subtask (task {task.id})",
        )
    except Exception:
        logger.exception("task %d: could not fail a subtask", task.id)


def build_executor(ctx: Context, task: Task, param: Param) -> TaskExecutor | None:
    """Factory lookup and ``init``.

    Unknown type or a non-retryable init error → ``fail_subtask`` (the scheduler reverts the
    task) and None; a retryable init error → None, tried again on a later pass.
    """
    factory = get_task_executor_factory(task.type)
    if factory is None:
        _fail_subtask(
            task,
            param,
            UnknownTaskTypeError(
                f"task type {task.type!r} is not registered on {param.exec_id}; "
                f"call register_task_type({task.type!r}, factory) in the worker"
            ),
        )
        return None
    try:
        executor = factory(ctx, task, param)
    except Exception as err:
        _fail_subtask(task, param, err)
        return None
    try:
        executor.init(ctx)
    except Exception as err:
        if executor.is_retryable_error(err):
            logger.warning("task %d: executor init failed, will retry: %s", task.id, err)
        else:
            _fail_subtask(task, param, err)
        executor.close()
        return None
    return executor


def run_executor(
    ctx: Context, task: Task, param: Param, *, on_built: Callable[[TaskExecutor], None] | None = None
) -> bool:
    """Build, run and close an executor (the body of ``dxf.execute``); False when it was not built.

    ``on_built`` is called with the executor before it runs, so that cancel requests can
    reach it while it runs.
    """
    executor = build_executor(ctx, task, param)
    if executor is None:
        return False
    try:
        if on_built is not None:
            on_built(executor)
        executor.run()
    finally:
        executor.close()
    return True


class ThreadRunningExecutor:
    """An executor running in a daemon thread of this process."""

    def __init__(self, executor: TaskExecutor, task_id: int) -> None:
        self.task_id = task_id
        self.executor = executor
        self._thread = threading.Thread(target=self._run, name=f"dxf-executor-{task_id}", daemon=True)

    def _run(self) -> None:
        try:
            self.executor.run()
        except Exception:
            logger.exception("task %d: executor run() raised", self.task_id)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self.executor.cancel()

    def cancel_running_subtask(self) -> None:
        self.executor.cancel_running_subtask()

    def drain(self) -> None:
        drain_executor(self.executor)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        self.executor.close()


class ThreadLauncher:
    """Default launcher: builds the executor in the caller (like DXF) and runs it in a thread."""

    def launch(self, ctx: Context, task: Task, param: Param) -> RunningExecutor:
        executor = build_executor(ctx, task, param)
        if executor is None:
            raise LaunchError(f"executor of task {task.id} ({task.type}) could not be built")
        running = ThreadRunningExecutor(executor, task.id)
        running.start()
        return running
