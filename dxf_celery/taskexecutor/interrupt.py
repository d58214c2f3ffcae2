"""Step code is marked explicitly, so the framework can interrupt it and nothing else.

The executor enters :func:`step_code` right around ``step_exec.run_subtask(...)``. While a
thread carries that mark, and only then, :func:`interrupt` raises
:class:`~dxf_celery.errors.ExecutorCancelledError` in it: a ``BaseException``, so a
user's ``except Exception`` cannot swallow it, which the executor catches at the subtask
boundary and records as the cancellation it is. The mark and the raise are taken under
one lock, so once the mark is cleared no new interruption can be scheduled for that thread.

The exception is delivered with ``PyThreadState_SetAsyncExc`` (at the thread's next
bytecode). Where that is not enough (the main thread of a prefork child, which may sit in
``time.sleep``), the worker registers a *raiser* for the thread that delivers it from a
signal handler instead (:func:`set_raiser`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dxf_celery.context import Context
from dxf_celery.errors import ExecutorCancelledError

logger = logging.getLogger(__name__)

_lock = threading.Lock()
#: Thread ident -> id of the subtask whose step code that thread runs now.
_in_step_code: dict[int, int] = {}
#: Thread ident -> how to raise in that thread instead of an asynchronous exception.
_raisers: dict[int, Callable[[int], None]] = {}


@contextmanager
def step_code(subtask_id: int) -> Iterator[None]:
    """Mark the calling thread as running the step code of ``subtask_id`` for the ``with`` body."""
    ident = threading.get_ident()
    with _lock:
        _in_step_code[ident] = subtask_id
    try:
        yield
    finally:
        leave_step_code(ident)


def leave_step_code(ident: int | None = None) -> None:
    """Clear the mark of a thread (default: the caller's); idempotent."""
    with _lock:
        _in_step_code.pop(threading.get_ident() if ident is None else ident, None)


def running_subtask_id(ident: int) -> int | None:
    """The subtask whose step code thread ``ident`` runs now, or None (it runs framework code).

    Lock-free (a dict read), so a signal handler may call it.
    """
    return _in_step_code.get(ident)


def set_raiser(ident: int, raiser: Callable[[int], None] | None) -> None:
    """Deliver interruptions of thread ``ident`` with ``raiser(subtask_id)``; None restores the default."""
    with _lock:
        if raiser is None:
            _raisers.pop(ident, None)
        else:
            _raisers[ident] = raiser


def interrupt(ident: int, subtask_id: int) -> bool:
    """Raise ``ExecutorCancelledError`` in thread ``ident`` if it still runs step code of ``subtask_id``."""
    with _lock:
        if _in_step_code.get(ident) != subtask_id:
            return False
        raiser = _raisers.get(ident)
        if raiser is not None:
            raiser(subtask_id)
            return True
        return _async_raise(ident, ExecutorCancelledError)


def _async_raise(ident: int, exc_type: type[BaseException]) -> bool:
    """Schedule ``exc_type`` in another thread of this process (it fires at its next bytecode)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if done > 1:  # pragma: no cover - would mean the ident matched several threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return False
    return bool(done)


__all__ = ["enforce_cancel", "interrupt", "leave_step_code", "running_subtask_id", "set_raiser", "step_code"]


def enforce_cancel(
    ident: int, subtask_id: int, returned: threading.Event, grace: float, what: str, ctx: Context
) -> None:
    """Interrupt step code still running ``grace`` seconds after its Context ``ctx`` was cancelled.

    Repeated every grace period while the step code runs on (it may catch the exception by
    name); :func:`interrupt` never raises once the step code has returned.
    """
    while not returned.wait(grace):
        if not interrupt(ident, subtask_id):
            return
        logger.warning("%s ignored its cancellation (%s) for %.1fs; interrupting it", what, ctx.cause, grace)
