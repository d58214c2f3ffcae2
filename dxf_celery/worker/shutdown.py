"""A bound on worker shutdown: exit even when a broker call never returns.

Celery's shutdown handlers only set a flag that the main thread acts on; a main thread stuck
in a broker call (a server that stopped answering: no reply, no error, no socket timeout)
never looks at it, and ``Warm shutdown`` / ``Cold shutdown`` then hang until SIGKILL, leaving
the node row behind. The watchdog armed on the shutdown signal gives the shutdown
``dxf_shutdown_timeout`` seconds (a cold one at most :data:`COLD_BOUND`), then removes the
node row, kills the pool processes and exits the process with status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Longest a cold shutdown may take: it waits for nothing by definition.
COLD_BOUND = 10.0
#: Longest the watchdog spends removing the node row before it exits anyway.
CLEANUP_BOUND = 5.0

_lock = threading.Lock()
_deadline: float | None = None
_armed = False


def shutdown_bound(how: str, timeout: float) -> float | None:
    """Seconds the shutdown ``how`` ("Warm", "Cold", ...) may take; ``None`` = no bound."""
    if timeout <= 0:
        return None
    return min(timeout, COLD_BOUND) if str(how).lower() == "cold" else timeout


def arm(bound: float, *, hostname: str, cleanup: Callable[[], None]) -> None:
    """Exit the process ``bound`` seconds from now unless it exits by itself first.

    Arming again only shortens the deadline (a cold shutdown after a warm one). Runs the
    timer in a daemon thread, so a shutdown that finishes in time exits the process
    normally and the thread dies with it.
    """
    global _deadline, _armed
    with _lock:
        deadline = time.monotonic() + bound
        if _deadline is not None and _deadline <= deadline:
            return
        _deadline = deadline
        if _armed:
            return
        _armed = True
    threading.Thread(target=_watch, args=(hostname, cleanup), name="dxf-shutdown-watchdog", daemon=True).start()


def _watch(hostname: str, cleanup: Callable[[], None]) -> None:
    while True:
        with _lock:
            assert _deadline is not None
            left = _deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.5))
    logger.error("DXF: shutdown of %s did not finish within its bound (dxf_shutdown_timeout); exiting now", hostname)
    done = threading.Thread(target=_quietly, args=(cleanup,), name="dxf-shutdown-cleanup", daemon=True)
    done.start()
    done.join(CLEANUP_BOUND)
    _kill_pool_children()
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # pragma: no cover - a broken handler must not keep the process alive
            pass
    os._exit(1)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as err:  # the process exits next: one line is all this is worth
        logger.warning("DXF: cleanup before the forced exit failed: %s", err)


def _kill_pool_children() -> None:
    """SIGKILL the pool processes (prefork children would otherwise outlive their parent)."""
    try:
        from billiard import process
    except ImportError:  # pragma: no cover - billiard ships with Celery
        return
    for child in process.active_children():
        pid = getattr(child, "pid", None)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
