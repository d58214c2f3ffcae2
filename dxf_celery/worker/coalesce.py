"""Coalesced scheduler wake-ups: at most one message per reason per window, the last one trailing.

A client submitting in a loop sent one ``dxf.schedule`` message per submit: about a third of
a submit's time, and one scheduler pass plus one ``dxf_wake`` broadcast per task on the
holder. A pass sees every task written before it starts, so one wake-up per window does the
same work. The first request of a window is sent at once (a lone submit is not delayed);
later ones in the window arm one trailing send at its end, so the last write is never left
to beat's next tick. Wake-ups are latency only: a lost or late one costs a beat interval.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Hashable

#: ``schedule(delay, fn)``: run ``fn`` once after ``delay`` seconds (a test passes its own).
Scheduler = Callable[[float, Callable[[], None]], None]


def _timer(delay: float, fn: Callable[[], None]) -> None:
    # A daemon, so that a send stuck on an unreachable broker never holds the interpreter's
    # exit; a script that exits with a trailing send armed gets it from ``flush`` (atexit).
    timer = threading.Timer(delay, fn)
    timer.name = "dxf-wakeup-trailing"
    timer.daemon = True
    timer.start()


class WakeCoalescer:
    """Send ``send(key)`` at most once per ``window`` seconds per key, plus one trailing send.

    ``window`` 0 sends every request. Fork-safe: a child process starts with no window open
    (a parent's armed timer does not exist there). At interpreter exit the armed trailing
    sends go out at once (:meth:`flush`), so a script's last submit still wakes the scheduler.
    """

    def __init__(self, send: Callable[[Hashable], None], window: float, schedule: Scheduler = _timer) -> None:
        self._send = send
        self.window = window
        self._schedule = schedule
        self._pid = os.getpid()
        self._lock = threading.Lock()
        #: key -> (end of its window, a trailing send is armed)
        self._windows: dict[Hashable, tuple[float, bool]] = {}
        atexit.register(self.flush)

    def flush(self) -> None:
        """Send every armed trailing wake-up now (interpreter exit; its timer may fire too: harmless)."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            armed = [key for key, (_, trailing) in self._windows.items() if trailing]
            for key in armed:
                self._windows[key] = (time.monotonic() + self.window, False)
        for key in armed:
            self._send(key)

    def request(self, key: Hashable) -> None:
        """A write happened that a scheduler pass should see soon."""
        if self.window <= 0:
            self._send(key)
            return
        if os.getpid() != self._pid:  # forked: neither the lock's owner nor the timers came along
            self._pid, self._lock, self._windows = os.getpid(), threading.Lock(), {}
        now = time.monotonic()
        with self._lock:
            until, armed = self._windows.get(key, (-1.0, False))
            if armed:
                return  # the trailing send will carry this one
            if now >= until:
                self._windows[key] = (now + self.window, False)
                send_now = True
            else:
                self._windows[key] = (until, True)
                send_now = False
        if send_now:
            self._send(key)
        else:
            self._schedule(max(0.0, until - now), lambda: self._trail(key))

    def _trail(self, key: Hashable) -> None:
        with self._lock:
            # The trailing send opens the next window: a steady stream gets one per window.
            self._windows[key] = (time.monotonic() + self.window, False)
        self._send(key)
