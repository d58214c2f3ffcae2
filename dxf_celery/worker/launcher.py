"""The node Manager's launcher under Celery: each executor is a ``dxf.execute`` task on the node's queue.

Runs in the worker main process. :class:`CeleryLauncher` publishes the executor message to
the queue only this node consumes; :class:`CeleryRunningExecutor` is the Manager's grip on it:

* ``done()`` becomes true when the worker reports the request finished (success, error,
  revoked, or the pool process died: :class:`LaunchTracker` is fed by the request class of
  ``dxf.execute`` and by the ``task_revoked`` signal, all in this process), or when the
  message was never received within ``launch_timeout`` (it carries the same ``expires``, so
  a late copy is discarded rather than run twice);
* ``cancel()`` / ``cancel_running_subtask()`` go to the executor directly when it runs in
  this process (threads, solo), or as SIGUSR1 to the pool child running it (prefork), or
  mark a not yet started request revoked so it is discarded.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dxf_celery.context import Context
from dxf_celery.proto import Task
from dxf_celery.taskexecutor.param import Param
from dxf_celery.worker.execution import DRAIN_SIGNAL, local_executions
from dxf_celery.worker.names import EXECUTE_TASK
from dxf_celery.worker.outcome import backend_configured

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

#: Extra seconds past ``launch_timeout`` before an unreceived launch counts as gone.
RECEIVE_GRACE = 5.0
#: Seconds between two drain requests to one executor (the Manager asks on every pass; a
#: signal that reached a pool child before it was ready for it is simply sent again).
DRAIN_RESEND = 1.0


@dataclass
class _Launch:
    task_id: int
    expires_at: float
    received: bool = False
    finished: bool = False
    request: Any = None


class LaunchTracker:
    """What the worker main process knows about each ``dxf.execute`` request it launched.

    ``received`` comes from the ``task_received`` signal, ``request`` (the accepted Request)
    from the request class's ``on_accepted``; a request that was accepted and has left
    Celery's active set has finished, whatever the way (success, error, pool process lost).
    Discarded requests (revoked, expired) are reported by the ``task_revoked`` signal.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._launches: dict[str, _Launch] = {}

    def add(self, celery_id: str, task_id: int, expires_in: float) -> None:
        with self._lock:
            self._launches[celery_id] = _Launch(task_id, time.monotonic() + expires_in + RECEIVE_GRACE)

    def received(self, celery_id: str) -> None:
        with self._lock:
            launch = self._launches.get(celery_id)
            if launch is not None:
                launch.received = True

    def accepted(self, celery_id: str, request: Any) -> None:
        with self._lock:
            launch = self._launches.get(celery_id)
            if launch is not None:
                launch.received = True
                launch.request = request

    def finished(self, celery_id: str) -> None:
        with self._lock:
            launch = self._launches.get(celery_id)
            if launch is not None:
                launch.finished = True
                launch.request = None

    def is_done(self, celery_id: str) -> bool:
        from celery.worker import state as worker_state

        with self._lock:
            launch = self._launches.get(celery_id)
            if launch is None or launch.finished:
                return True
            if launch.request is not None:
                if launch.request in worker_state.active_requests:
                    return False
                launch.finished = True
                launch.request = None
                return True
            return not launch.received and time.monotonic() > launch.expires_at

    def request_of(self, celery_id: str) -> Any:
        with self._lock:
            launch = self._launches.get(celery_id)
            return None if launch is None else launch.request

    def forget(self, celery_id: str) -> None:
        with self._lock:
            self._launches.pop(celery_id, None)

    def count(self) -> int:
        with self._lock:
            return len(self._launches)


#: One tracker per worker process (a process runs one worker).
tracker = LaunchTracker()


class CeleryRunningExecutor:
    """The Manager's grip on one ``dxf.execute`` request."""

    def __init__(self, launcher: CeleryLauncher, task_id: int, celery_id: str) -> None:
        self.task_id = task_id
        self.celery_id = celery_id
        self._launcher = launcher
        self._sent: set[str] = set()
        self._lock = threading.Lock()
        self._last_drain: float | None = None

    def _once(self, kind: str) -> bool:
        with self._lock:
            if kind in self._sent or "executor" in self._sent:
                return False
            self._sent.add(kind)
            return True

    def cancel(self) -> None:
        if not self.done() and self._once("executor"):
            self._launcher.cancel_execution(self.celery_id, subtask_only=False)

    def cancel_running_subtask(self) -> None:
        if not self.done() and self._once("subtask"):
            self._launcher.cancel_execution(self.celery_id, subtask_only=True)

    def drain(self) -> None:
        if self.done():
            return
        now = time.monotonic()
        with self._lock:
            if "executor" in self._sent or (self._last_drain is not None and now - self._last_drain < DRAIN_RESEND):
                return
            self._last_drain = now
        self._launcher.drain_execution(self.celery_id)

    def done(self) -> bool:
        return tracker.is_done(self.celery_id)

    def close(self) -> None:
        tracker.forget(self.celery_id)

    def __repr__(self) -> str:
        return f"<CeleryRunningExecutor task={self.task_id} celery_id={self.celery_id}>"


class CeleryLauncher:
    """Starts executors as ``dxf.execute`` tasks routed to this node's own queue."""

    def __init__(
        self,
        app: Celery,
        *,
        nodename: str,
        queue: str,
        launch_timeout: float,
        pool_kind: str,
        events_enabled: Any = None,
        incarnation: str = "",
    ) -> None:
        self.app = app
        self.nodename = nodename
        self.queue = queue
        self.launch_timeout = launch_timeout
        self.pool_kind = pool_kind
        self._events_enabled = events_enabled
        self.incarnation = incarnation
        self._results = backend_configured(app)

    def launch(self, ctx: Context, task: Task, param: Param) -> CeleryRunningExecutor:
        celery_id = uuid.uuid4().hex
        events = bool(self._events_enabled()) if self._events_enabled is not None else False
        tracker.add(celery_id, task.id, self.launch_timeout)
        try:
            self.app.send_task(
                EXECUTE_TASK,
                args=[task.id, param.exec_id],
                kwargs={
                    "slots": param.node_resource.total_cpu,
                    "memory": param.node_resource.total_mem,
                    "events": events,
                    "incarnation": self.incarnation,
                },
                task_id=celery_id,
                queue=self.queue,
                routing_key=self.queue,
                expires=self.launch_timeout,
                shadow=execute_display_name(task),
                argsrepr=f"(task={task.id}, key={task.key!r}, type={task.type!r})",
                kwargsrepr="{}",
                # With a result backend the executor's outcome is stored (and PROGRESS meanwhile).
                ignore_result=not self._results,
            )
        except Exception:
            tracker.forget(celery_id)
            raise
        logger.debug("%s: launched executor of task %d as %s", self.nodename, task.id, celery_id)
        return CeleryRunningExecutor(self, task.id, celery_id)

    def cancel_execution(self, celery_id: str, *, subtask_only: bool) -> None:
        """Deliver a cancel to wherever the request is: in-process, a pool child, or still queued."""
        if local_executions.cancel(celery_id, subtask_only):
            return
        request = tracker.request_of(celery_id)
        pid = getattr(request, "worker_pid", None) if request is not None else None
        if pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGUSR1)
                logger.debug("%s: sent SIGUSR1 to pid %s for %s", self.nodename, pid, celery_id)
                return
            except ProcessLookupError:
                return
        # Not started yet: Celery discards it when it comes up (it checks its revoked set);
        # an in-process execution that is just starting checks the same set once registered.
        from celery.worker import state as worker_state

        worker_state.revoked.add(celery_id)
        local_executions.cancel(celery_id, subtask_only)

    def drain_execution(self, celery_id: str) -> None:
        """Ask the executor to drain: directly in-process, SIGUSR2 to a pool child, or discard a queued one."""
        if local_executions.drain(celery_id):
            return
        request = tracker.request_of(celery_id)
        pid = getattr(request, "worker_pid", None) if request is not None else None
        if pid and pid != os.getpid():
            try:
                os.kill(pid, DRAIN_SIGNAL)
            except ProcessLookupError:
                pass
            return
        # Not started: it has claimed nothing, so discarding it is a drain.
        from celery.worker import state as worker_state

        worker_state.revoked.add(celery_id)
        local_executions.drain(celery_id)


def execute_display_name(task: Task) -> str:
    """The name Flower and the worker log show for an executor request.

    No step: one executor runs every step of its task that has subtasks on this node (as
    DXF's does), so a step fixed at launch would go stale; the progress and the result say
    which steps it ran.
    """
    return f"dxf.execute[task={task.id} key={task.key} type={task.type}]"
