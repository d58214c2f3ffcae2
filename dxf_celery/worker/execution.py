"""Cancelling one running executor from outside: cooperative first, forced only as a fallback.

An :class:`ExecutionControl` wraps an executor while the ``dxf.execute`` task runs it. A
cancel request first goes through the executor's own API (``cancel()`` or
``cancel_running_subtask()``: the Context tree, so the step code sees ``ctx.done()`` and the
framework records the right subtask state). If the step code is still inside
``run_subtask`` after ``cancel_grace`` seconds (it ignores its Context, e.g. a tight Python
loop), an exception is raised inside it: in a prefork child through a SIGUSR1 handler (the
same signal ``revoke(terminate=True, signal="SIGUSR1")`` sends, which also interrupts
``time.sleep``), in a thread through ``PyThreadState_SetAsyncExc``. The executor sees its
subtask context is cancelled and treats the exception as that cancellation. An exception
is only injected while the thread is inside the step's ``run_subtask``, never while the
framework writes to SQL.

Requests arrive from three places: the worker main process (threads and solo pools: a direct
call, same process), a signal (prefork: SIGUSR1 from the node's Manager or a revoke), and the
executor's own SQL watch (done by the executor itself).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from dxf_celery.proto import TaskState
from dxf_celery.taskexecutor import task_executor as _task_executor_module
from dxf_celery.taskexecutor.interfaces import TaskExecutor

logger = logging.getLogger(__name__)

#: How many times a forced interruption is retried when step code swallows it.
FORCE_ATTEMPTS = 5

_RUN_SUBTASK_FILE = _task_executor_module.__file__
_REVERT_STATES = frozenset({TaskState.REVERTING, TaskState.CANCELLING, TaskState.AWAITING_RESOLUTION})


class ExecutorCancelledError(Exception):
    """Raised inside step code that did not stop on its cancelled Context within the grace period."""

    def __init__(self, message: str = "subtask interrupted: it did not stop after its context was cancelled") -> None:
        super().__init__(message)


def running_subtask_id(frame: FrameType | None) -> int | None:
    """The id of the subtask whose step code ``frame`` (a thread's innermost frame) is in, if any.

    True only between the framework's call of ``step_exec.run_subtask`` and its return:
    never while the framework itself runs (SQL writes, bookkeeping).
    """
    callee: FrameType | None = None
    current = frame
    while current is not None:
        code = current.f_code
        if code.co_name == "_run_subtask" and code.co_filename == _RUN_SUBTASK_FILE:
            if callee is None or callee.f_code.co_name != "run_subtask":
                return None
            subtask = current.f_locals.get("subtask")
            subtask_id = getattr(subtask, "id", None)
            return subtask_id if isinstance(subtask_id, int) else None
        callee = current
        current = current.f_back
    return None


def _async_raise(thread_ident: int, exc_type: type[BaseException]) -> bool:
    """Schedule ``exc_type`` in another thread of this process (it fires at its next bytecode)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), ctypes.py_object(exc_type))
    if done > 1:  # pragma: no cover - would mean the ident matched several threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), None)
        return False
    return bool(done)


class ExecutionControl:
    """The cancel switchboard of one executor run (one ``dxf.execute`` call)."""

    def __init__(
        self,
        task_id: int,
        *,
        grace: float,
        read_state: Callable[[], TaskState | None] | None = None,
        use_signal: bool = False,
    ) -> None:
        self.task_id = task_id
        self.grace = grace
        self.thread_ident = threading.get_ident()
        self._read_state = read_state
        self._use_signal = use_signal
        self._executor: TaskExecutor | None = None
        self._lock = threading.Lock()
        self._requested: str | None = None  # None, "subtask" or "executor"
        self._pending: list[bool] = []
        self._force_armed = False
        self._force_target: int | None = None
        self._force_now = False
        self._closed = threading.Event()
        self._wakeup_r = self._wakeup_w = -1
        self._helper: threading.Thread | None = None
        self._previous_handler: Any = None

    # ------------------------------------------------------------------ lifecycle

    def attach(self, executor: TaskExecutor) -> None:
        with self._lock:
            self._executor = executor
            early = self._requested
        if early is not None:
            self._apply(early == "subtask")

    def __enter__(self) -> ExecutionControl:
        if self._use_signal:
            self._wakeup_r, self._wakeup_w = os.pipe()
            os.set_blocking(self._wakeup_w, False)
            self._helper = threading.Thread(target=self._helper_loop, name=f"dxf-cancel-{self.task_id}", daemon=True)
            self._helper.start()
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        if self._use_signal:
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
        self._arm_force()

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

    # ------------------------------------------------------------------ forced fallback

    def _arm_force(self) -> None:
        """Interrupt the subtask running now if it is still running after the grace period.

        Only that subtask: if the executor moved on (it returned cooperatively), nothing is forced.
        """
        target = running_subtask_id(_thread_frame(self.thread_ident))
        with self._lock:
            if self._force_armed or target is None:
                return
            self._force_armed = True
            self._force_target = target
        threading.Thread(target=self._force_loop, args=(target,), name=f"dxf-force-{self.task_id}",
                         daemon=True).start()

    def _force_loop(self, target: int) -> None:
        for _ in range(FORCE_ATTEMPTS):
            if self._closed.wait(self.grace):
                return
            if running_subtask_id(_thread_frame(self.thread_ident)) != target:
                return
            logger.warning("task %d: subtask %d ignored cancellation for %.1fs; interrupting it",
                           self.task_id, target, self.grace)
            if self._use_signal and threading.main_thread().ident == self.thread_ident:
                self._force_now = True
                os.kill(os.getpid(), signal.SIGUSR1)
            else:
                _async_raise(self.thread_ident, ExecutorCancelledError)

    # ------------------------------------------------------------------ prefork signal path

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1 handler: async-signal-light (no locks); the helper thread does the work."""
        if self._force_now:
            self._force_now = False
            if self._force_target is not None and running_subtask_id(frame) == self._force_target:
                raise ExecutorCancelledError()
            return
        self._pending.append(True)
        try:
            os.write(self._wakeup_w, b"c")
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
            if self._pending:
                self._pending.clear()
                self.request(None)


def _thread_frame(ident: int) -> FrameType | None:
    return sys._current_frames().get(ident)


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

    def count(self) -> int:
        with self._lock:
            return len(self._controls)


#: The executions of this process (one per thread on the threads pool, at most one elsewhere).
local_executions = LocalRegistry()

