"""Cancelling one running executor from outside the executor: the ``dxf.execute`` side of it.

An :class:`ExecutionControl` wraps an executor while the ``dxf.execute`` task runs it. A
cancel request goes through the executor's own API (``cancel()`` or
``cancel_running_subtask()``: the Context tree, so the step code sees ``ctx.done()`` and the
framework records the right subtask state). Step code that ignores its Context is
interrupted by the executor itself after ``dxf_cancel_grace`` (the same code on every path,
see :mod:`dxf_celery.taskexecutor.interrupt`); in a prefork child, where the executor runs
on the main thread, this control delivers that interruption from a SIGUSR1 handler, which
also breaks a ``time.sleep``.

Requests arrive from three places: the worker main process (threads and solo pools: a direct
call, same process), a signal (prefork: SIGUSR1 from the node's Manager or a revoke), and the
executor's own SQL watch (done by the executor itself).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from dxf_celery.errors import ExecutorCancelledError
from dxf_celery.proto import TaskState
from dxf_celery.taskexecutor import interrupt
from dxf_celery.taskexecutor.interfaces import TaskExecutor
from dxf_celery.taskexecutor.launcher import drain_executor

__all__ = [
    "DRAIN_SIGNAL",
    "ExecutionControl",
    "ExecutorCancelledError",
    "LocalRegistry",
    "install_cancel_router",
    "install_drain_handler",
    "local_executions",
    "note_task_starting",
]

logger = logging.getLogger(__name__)

#: Sent by the node's Manager to the pool child whose executor must drain (SIGUSR1 means cancel).
DRAIN_SIGNAL = signal.SIGUSR2

#: The control of the execution running on this process's main thread (prefork child), if any.
_signal_control: ExecutionControl | None = None

#: What the pool child is doing, for routing a SIGUSR1 (see :func:`install_cancel_router`):
#: ``"other"`` (any other task, or nothing yet: the pool's own handler, Celery's soft time
#: limit, gets it), ``"dxf-starting"`` (a ``dxf.execute`` before its control is up: kept for
#: it), ``"dxf-ended"`` (after a ``dxf.execute``: a late cancel of a finished run, dropped).
_child_phase = "other"
#: A cancel that reached a starting ``dxf.execute`` before its control was up.
_early_cancel = False
#: The SIGUSR1 handler the pool installed (billiard's soft-time-limit one) while the router owns the signal.
_pool_sigusr1: Any = None


def _on_drain_signal(signum: int, frame: FrameType | None) -> None:
    """SIGUSR2 handler of a pool child: hand the drain to the running execution (none: nothing to drain)."""
    control = _signal_control
    if control is not None:
        control._signal_drain()


def install_drain_handler() -> None:
    """In each pool child at start (``worker_process_init``): SIGUSR2 must never kill it (its default)."""
    signal.signal(DRAIN_SIGNAL, _on_drain_signal)


def _route_cancel_signal(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1 in a pool child: to the running executor, kept for a starting one, dropped after one.

    The node's Manager may signal a run that has just ended (the executor saw the pause in
    SQL first). Reaching the pool's soft-time-limit handler then raised
    ``SoftTimeLimitExceeded`` in the middle of the child writing its result: the worker
    read half a message, kept the request active for ever, and the node never started
    that task's executor again.
    """
    global _early_cancel
    control = _signal_control
    if control is not None:
        control._on_signal(signum, frame)
    elif _child_phase == "dxf-starting":
        _early_cancel = True
    elif _child_phase == "other" and callable(_pool_sigusr1):
        _pool_sigusr1(signum, frame)


def install_cancel_router() -> None:
    """Route SIGUSR1 through :func:`_route_cancel_signal`, keeping the handler it replaces for other tasks.

    Called as each task starts in a pool child (``task_prerun``): billiard installs its
    soft-time-limit handler after ``worker_process_init``, so that is too early.
    """
    global _pool_sigusr1
    if not _router_active():
        _pool_sigusr1 = signal.signal(signal.SIGUSR1, _route_cancel_signal)


def _router_active() -> bool:
    return signal.getsignal(signal.SIGUSR1) is _route_cancel_signal


def note_task_starting(task_name: str, execute_name: str) -> None:
    """``task_prerun`` in a pool child: which task the next SIGUSR1 belongs to."""
    global _child_phase, _early_cancel
    install_cancel_router()
    _early_cancel = False
    _child_phase = "dxf-starting" if task_name == execute_name else "other"


_REVERT_STATES = frozenset({TaskState.REVERTING, TaskState.CANCELLING, TaskState.AWAITING_RESOLUTION})


class ExecutionControl:
    """The cancel switchboard of one executor run (one ``dxf.execute`` call)."""

    def __init__(
        self,
        task_id: int,
        *,
        read_state: Callable[[], TaskState | None] | None = None,
        use_signal: bool = False,
    ) -> None:
        self.task_id = task_id
        self.thread_ident = threading.get_ident()
        self._read_state = read_state
        self._use_signal = use_signal
        self._executor: TaskExecutor | None = None
        self._lock = threading.Lock()
        self._requested: str | None = None  # None, "subtask" or "executor"
        self._pending: list[bool] = []
        self._pending_drain: list[bool] = []
        self._drain_requested = False
        self._force_target: int | None = None
        self._force_now = False
        self._closed = threading.Event()
        self._wakeup_r = self._wakeup_w = -1
        self._helper: threading.Thread | None = None
        self._previous_handler: Any = None
        self._owns_signal = False

    # ------------------------------------------------------------------ lifecycle

    def attach(self, executor: TaskExecutor) -> None:
        with self._lock:
            self._executor = executor
            early = self._requested
            drain = self._drain_requested
        if drain:
            self._apply_drain()
        if early is not None:
            self._apply(early == "subtask")

    def __enter__(self) -> ExecutionControl:
        if self._use_signal:
            self._wakeup_r, self._wakeup_w = os.pipe()
            os.set_blocking(self._wakeup_w, False)
            self._helper = threading.Thread(target=self._helper_loop, name=f"dxf-cancel-{self.task_id}", daemon=True)
            self._helper.start()
            self._owns_signal = not _router_active()
            if self._owns_signal:  # not in a pool child set up by the worker: own the signal for the run
                self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)
            interrupt.set_raiser(self.thread_ident, self._raise_by_signal)
            global _signal_control, _early_cancel
            _signal_control = self
            if _early_cancel:
                _early_cancel = False
                self._on_signal(signal.SIGUSR1, None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        if self._use_signal:
            global _signal_control, _child_phase
            if _signal_control is self:
                _signal_control = None
            _child_phase = "dxf-ended"
            interrupt.set_raiser(self.thread_ident, None)
            if self._owns_signal:
                previous = self._previous_handler
                # A handler installed outside Python reads as None: ignoring beats dying on a stray signal.
                signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_IGN)
            try:
                os.write(self._wakeup_w, b"q")
            except OSError:
                pass
            if self._helper is not None:
                self._helper.join(timeout=5)
            for fd in (self._wakeup_r, self._wakeup_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # ------------------------------------------------------------------ requests

    def request(self, subtask_only: bool | None) -> None:
        """Cancel from another thread of this process; ``None`` = derive the kind from the task's state."""
        if self._closed.is_set():
            return
        if subtask_only is None:
            subtask_only = self._derive_subtask_only()
        with self._lock:
            level = "subtask" if subtask_only else "executor"
            if self._requested == "executor" or self._requested == level:
                return
            self._requested = level
            attached = self._executor is not None
        if attached:
            self._apply(subtask_only)

    def request_drain(self) -> None:
        """Drain from another thread of this process (warm shutdown, preemption)."""
        if self._closed.is_set():
            return
        with self._lock:
            self._drain_requested = True
            attached = self._executor is not None
        if attached:
            self._apply_drain()

    def _apply_drain(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            drain_executor(executor)
        except Exception:
            logger.exception("task %d: draining the executor failed", self.task_id)

    def _derive_subtask_only(self) -> bool:
        if self._read_state is None:
            return False
        try:
            state = self._read_state()
        except Exception as err:
            logger.debug("task %d: cannot read state for a cancel request: %s", self.task_id, err)
            return False
        return state in _REVERT_STATES

    def _apply(self, subtask_only: bool) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            if subtask_only:
                executor.cancel_running_subtask()
            else:
                executor.cancel()
        except Exception:
            logger.exception("task %d: cancelling the executor failed", self.task_id)

    @property
    def requested(self) -> str | None:
        return self._requested

    # ------------------------------------------------------------------ prefork signal path

    def _raise_by_signal(self, subtask_id: int) -> None:
        """Interrupt the main thread from the signal handler (it also breaks a ``time.sleep``)."""
        self._force_target = subtask_id
        self._force_now = True
        os.kill(os.getpid(), signal.SIGUSR1)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1 handler: async-signal-light (no locks); the helper thread does the work."""
        if self._force_now:
            self._force_now = False
            target = self._force_target
            if target is not None and interrupt.running_subtask_id(self.thread_ident) == target:
                raise ExecutorCancelledError()
            return
        self._pending.append(True)
        try:
            os.write(self._wakeup_w, b"c")
        except OSError:
            pass

    def _signal_drain(self) -> None:
        """Called from the SIGUSR2 handler: no locks, the helper thread does the work."""
        self._pending_drain.append(True)
        try:
            os.write(self._wakeup_w, b"d")
        except OSError:
            pass

    def _helper_loop(self) -> None:
        while True:
            try:
                data = os.read(self._wakeup_r, 64)
            except OSError:
                return
            if not data or b"q" in data or self._closed.is_set():
                return
            if self._pending_drain:
                self._pending_drain.clear()
                self.request_drain()
            if self._pending:
                self._pending.clear()
                self.request(None)


class LocalRegistry:
    """Executions running in this process, by Celery task id (threads and solo pools)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._controls: dict[str, ExecutionControl] = {}

    def register(self, celery_id: str, control: ExecutionControl) -> None:
        with self._lock:
            self._controls[celery_id] = control

    def unregister(self, celery_id: str) -> None:
        with self._lock:
            self._controls.pop(celery_id, None)

    def get(self, celery_id: str) -> ExecutionControl | None:
        with self._lock:
            return self._controls.get(celery_id)

    def cancel(self, celery_id: str, subtask_only: bool) -> bool:
        """Cancel a local execution; True when it runs here."""
        with self._lock:
            control = self._controls.get(celery_id)
        if control is None:
            return False
        control.request(subtask_only)
        return True

    def drain(self, celery_id: str) -> bool:
        """Drain a local execution; True when it runs here."""
        with self._lock:
            control = self._controls.get(celery_id)
        if control is None:
            return False
        control.request_drain()
        return True

    def count(self) -> int:
        with self._lock:
            return len(self._controls)


#: The executions of this process (one per thread on the threads pool, at most one elsewhere).
local_executions = LocalRegistry()
