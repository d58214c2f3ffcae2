"""Drain: an executor finishes the subtask it runs, claims no more, and abandons it only past a grace.

Warm shutdown and preemption ask for a drain instead of a cancel: a non-idempotent subtask
left ``running`` can never be resumed (the task reverts), so stopping at a subtask boundary
keeps the work. The grace bounds the wait; when it runs out the executor's Context is
cancelled with :class:`~dxf_celery.errors.DrainGraceExpiredError` as the cause (the row is
left ``running``, as DXF leaves it, unless the step code raises ``SubtaskNotStartedError``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dxf_celery.context import Context
from dxf_celery.errors import DrainGraceExpiredError

logger = logging.getLogger(__name__)


class Drain:
    """The drain flag of one executor and the timer that ends the grace."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = threading.Event()

    @property
    def requested(self) -> bool:
        """True once a drain was asked for: the executor claims no further subtask."""
        return self._requested.is_set()

    def request(self, ctx: Context, grace: float, what: str) -> bool:
        """Start draining; ``ctx`` is cancelled after ``grace`` seconds unless it ends first.

        Idempotent: a repeated request (the Manager resends it) keeps the first deadline.
        Returns True for the request that started the drain.
        """
        with self._lock:
            if self._requested.is_set():
                return False
            self._requested.set()
        if ctx.done():
            return True
        if grace <= 0:
            ctx.cancel(DrainGraceExpiredError())
            return True
        logger.info("%s: draining: the running subtask may finish within %.1fs; no new subtask starts", what, grace)
        timer = threading.Thread(target=self._expire, args=(ctx, grace, what), name="dxf-drain", daemon=True)
        timer.start()
        return True

    @staticmethod
    def _expire(ctx: Context, grace: float, what: str) -> None:
        if ctx.wait(grace):
            return  # the executor stopped within the grace
        logger.warning("%s: drain grace of %.1fs is over; cancelling the running subtask", what, grace)
        ctx.cancel(DrainGraceExpiredError())


def back_to_pending(write: Callable[[], bool]) -> None:
    """Run the guarded running → pending write for a subtask that raised ``SubtaskNotStartedError``."""
    try:
        back = write()
    except Exception as err:
        logger.warning("could not return a not-started subtask to pending: %s", err)
        return
    if not back:
        logger.info("a subtask stopped before doing anything, but its row is no longer running here")


__all__ = ["Drain", "back_to_pending"]
