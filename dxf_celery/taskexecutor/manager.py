"""The node Manager: one per worker node, it starts, preempts, pauses and reverts executors.

``handle_tasks()`` is one pass; the Celery beat tick calls it, or :meth:`Manager.start` runs
it in a thread loop. It acts only through a :class:`Launcher` and the :class:`RunningExecutor`
objects it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from dxf_celery.context import Context
from dxf_celery.errors import is_transient_error
from dxf_celery.proto import NodeResource, TaskBase, TaskState
from dxf_celery.retry import run_with_retry
from dxf_celery.taskexecutor.interfaces import TaskTable
from dxf_celery.taskexecutor.launcher import Launcher, RunningExecutor, ThreadLauncher, drain_executor
from dxf_celery.taskexecutor.param import Intervals, InvalidSettingError, Param
from dxf_celery.taskexecutor.register import snapshot_task_executors
from dxf_celery.taskexecutor.slots import SlotManager

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long ``stop()`` waits for executors to notice cancellation before giving up.
STOP_TIMEOUT = 30.0


class Manager:
    """Monitors the task table for this node and manages its task executors."""

    def __init__(
        self,
        ctx: Context,
        task_table: TaskTable,
        exec_id: str,
        node_resource: NodeResource,
        *,
        role: str = "",
        intervals: Intervals | None = None,
        launcher: Launcher | None = None,
        task_types: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        if not exec_id:
            raise InvalidSettingError("exec_id must name this node (e.g. the Celery worker's nodename)")
        self.ctx = ctx.child()
        self.task_table = task_table
        self.exec_id = exec_id
        self.node_resource = node_resource
        self.role = role
        self.intervals = intervals or Intervals()
        self.launcher: Launcher = launcher or ThreadLauncher()
        #: The types this node reports in its row (default: every ``register_task_type`` of the process).
        self.task_types: Callable[[], Iterable[str]] = task_types or snapshot_task_executors
        self.slot_manager = SlotManager(node_resource.total_cpu)
        self._executors: dict[int, RunningExecutor] = {}
        self._pass_lock = threading.Lock()
        self._exec_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._draining_all = False
        self._preempted: set[int] = set()
        now = time.monotonic()
        self._next_heartbeat = now + self.intervals.heartbeat
        self._next_recover = now + self.intervals.recover_meta

    # ------------------------------------------------------------------ introspection

    def running_task_ids(self) -> list[int]:
        with self._exec_lock:
            return list(self._executors)

    def running_executor(self, task_id: int) -> RunningExecutor | None:
        with self._exec_lock:
            return self._executors.get(task_id)

    # ------------------------------------------------------------------ node meta

    def _sql(self, fn: Callable[[], T], what: str) -> T:
        iv = self.intervals
        return run_with_retry(
            fn,
            ctx=self.ctx,
            max_retry=iv.sql_retry_times,
            backoff=iv.sql_backoff(),
            is_retryable=is_transient_error,
            what=what,
        )

    def init_meta(self) -> None:
        """Register this node (role, CPU slots, task types); retried on transient errors."""
        cpu = self.node_resource.total_cpu
        types = sorted(self.task_types())
        self._sql(lambda: self.task_table.init_meta(self.exec_id, self.role, cpu, types), "init_meta")

    def _periodic(self) -> None:
        now = time.monotonic()
        cpu = self.node_resource.total_cpu
        if now >= self._next_recover:
            self._next_recover = now + self.intervals.recover_meta
            try:
                self.task_table.recover_meta(self.exec_id, self.role, cpu, sorted(self.task_types()))
            except Exception as err:
                logger.warning("%s: recover_meta failed: %s", self.exec_id, err)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.intervals.heartbeat
            try:
                if not self.task_table.heartbeat(self.exec_id):
                    # Our row was removed (we were deemed dead): put it back at once.
                    self.task_table.recover_meta(self.exec_id, self.role, cpu, sorted(self.task_types()))
            except Exception as err:
                logger.warning("%s: heartbeat failed: %s", self.exec_id, err)

    # ------------------------------------------------------------------ one pass

    def handle_tasks(self) -> None:
        """One check pass; concurrent calls (duplicate beat ticks) are skipped."""
        if not self._pass_lock.acquire(blocking=False):
            return
        try:
            if self.ctx.done():
                return
            self._reap()
            self._periodic()
            try:
                infos = self.task_table.get_task_exec_info_by_exec_id(self.exec_id)
            except Exception as err:
                logger.warning("%s: cannot read tasks: %s", self.exec_id, err)
                return
            candidates: list[TaskBase] = []
            for info in infos:
                task = info.task
                running = self.running_executor(task.id)
                if task.state == TaskState.RUNNING:
                    if running is None:
                        candidates.append(task)
                    else:
                        self._reconcile(task, running)
                elif task.state == TaskState.PAUSING:
                    self._handle_pausing(task, running)
                elif task.state == TaskState.REVERTING:
                    self._handle_reverting(task, running)
            if self._draining_all:
                self._drain_every_executor()
            else:
                self._handle_executable(candidates)
        finally:
            self._pass_lock.release()

    def _reap(self) -> None:
        """Free the slots of executors whose ``run()`` returned."""
        with self._exec_lock:
            finished = [h for h in self._executors.values() if h.done()]
            for running in finished:
                del self._executors[running.task_id]
        for running in finished:
            self._preempted.discard(running.task_id)
            self.slot_manager.free(running.task_id)
            try:
                running.close()
            except Exception:
                logger.exception("%s: closing executor of task %d failed", self.exec_id, running.task_id)

    def _reconcile(self, task: TaskBase, running: RunningExecutor) -> None:
        """Keep the node's budget equal to the task's concurrency when the executor runs elsewhere."""
        held = self.slot_manager.slots_of(task.id)
        if held is None or held == task.concurrency:
            return
        try:
            fresh = self.task_table.get_task_base_by_id(task.id)  # the pass's read may be stale
        except Exception:
            return
        if fresh.concurrency == self.slot_manager.slots_of(task.id):
            return
        if not self.slot_manager.exchange(fresh):
            logger.info(
                "%s: no room for task %d to grow to %d slots; stopping its executor",
                self.exec_id,
                task.id,
                fresh.concurrency,
            )
            running.cancel()

    def _handle_pausing(self, task: TaskBase, running: RunningExecutor | None) -> None:
        if running is not None:
            running.cancel()
        try:
            self.task_table.pause_subtasks(self.exec_id, task.id)
        except Exception as err:
            logger.warning("%s: cannot pause subtasks of task %d: %s", self.exec_id, task.id, err)

    def _handle_reverting(self, task: TaskBase, running: RunningExecutor | None) -> None:
        if running is not None:
            running.cancel_running_subtask()
        try:
            self.task_table.cancel_subtask(self.exec_id, task.id)
        except Exception as err:
            logger.warning("%s: cannot cancel subtasks of task %d: %s", self.exec_id, task.id, err)

    def _handle_executable(self, candidates: list[TaskBase]) -> None:
        for task in candidates:
            if self.ctx.done():
                return
            fits, victims = self.slot_manager.can_alloc(task)
            if victims:
                for victim in victims:
                    running = self.running_executor(victim.id)
                    if running is not None:
                        if victim.id not in self._preempted:
                            self._preempted.add(victim.id)
                            logger.info(
                                "%s: task %d preempts task %d (draining it: it stops after its running subtask)",
                                self.exec_id,
                                task.id,
                                victim.id,
                            )
                        drain_executor(running)  # sent again each pass: a drain request may be lost
                return  # keep rank order: nothing else starts before the preempting task
            if not fits:
                continue  # a smaller, lower-ranked task may still fit (backfilling)
            if not self._start_executor(task):
                return

    def _start_executor(self, base: TaskBase) -> bool:
        try:
            task = self.task_table.get_task_by_id(base.id)
        except Exception as err:
            logger.warning("%s: cannot read task %d: %s", self.exec_id, base.id, err)
            return False
        if not self.slot_manager.alloc(task):
            return False
        param = Param(self.task_table, self.slot_manager, self.node_resource, self.exec_id, self.intervals)
        try:
            running = self.launcher.launch(self.ctx, task, param)
        except Exception as err:
            logger.info("%s: executor of task %d not started: %s", self.exec_id, task.id, err)
            self.slot_manager.free(task.id)
            return False
        with self._exec_lock:
            self._executors[task.id] = running
        if self.ctx.done():
            running.cancel()  # cancel() ran while we were launching: it did not see this executor
        return True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run ``handle_tasks`` every ``task_check`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=f"dxf-manager-{self.exec_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.ctx.done():
            try:
                self.handle_tasks()
            except Exception:
                logger.exception("%s: handle_tasks failed", self.exec_id)
            if self.ctx.wait(self.intervals.task_check):
                return

    def drain(self) -> None:
        """Warm shutdown: start no executor any more; drain the running ones (on this and every later pass).

        Each executor finishes its running subtask within ``intervals.drain_grace`` and claims
        no other; the passes go on (heartbeat, pause, revert) until the caller stops the loop.
        """
        self._draining_all = True
        with self._pass_lock:
            self._drain_every_executor()

    def _drain_every_executor(self) -> None:
        with self._exec_lock:
            runnings = list(self._executors.values())
        for running in runnings:
            try:
                drain_executor(running)
            except Exception:
                logger.exception("%s: draining executor of task %d failed", self.exec_id, running.task_id)

    def cancel(self) -> None:
        """Cancel every executor (rows untouched) and the manager's loop."""
        self.ctx.cancel()
        with self._exec_lock:
            runnings = list(self._executors.values())
        for running in runnings:
            try:
                running.cancel()
            except Exception:
                logger.exception("%s: cancelling executor of task %d failed", self.exec_id, running.task_id)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Cancel, wait (bounded) for executors to finish, free their slots, stop the loop."""
        self.cancel()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            with self._exec_lock:
                if all(h.done() for h in self._executors.values()):
                    break
            time.sleep(0.01)
        with self._pass_lock:
            self._reap()
        with self._exec_lock:
            left = list(self._executors)
        if left:
            logger.warning("%s: executors of tasks %s did not stop within %.0fs", self.exec_id, left, timeout)
