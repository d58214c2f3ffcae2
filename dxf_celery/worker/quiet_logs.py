"""Keep DXF's scheduler ticks out of info-level logs.

Beat sends the ``dxf-scheduler`` entry every ``dxf_scheduler_interval`` (0.5 s by default)
and logs each send at info: about 7,000 lines an hour that bury the lines operators look
for. A filter on Celery's ``celery.beat`` logger demotes exactly those records to debug,
so ``-l debug`` still shows them and every other beat entry keeps its info line.
"""

from __future__ import annotations

import logging
import threading

#: Beat's logger (``celery.beat`` logs through ``get_logger(__name__)``).
BEAT_LOGGER = "celery.beat"
_SENDING = "Scheduler: Sending due task"

_lock = threading.Lock()


class TickToDebug(logging.Filter):
    """Demote beat's "Sending due task" record of the given entries to debug."""

    def __init__(self, entries: frozenset[str]) -> None:
        super().__init__()
        self.entries = entries

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not isinstance(record.msg, str) or not record.msg.startswith(_SENDING):
            return True
        args = record.args
        if not isinstance(args, tuple) or not args or args[0] not in self.entries:
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def install(entry: str) -> TickToDebug:
    """Add (once per process) the filter for beat entry ``entry``; returns the installed filter."""
    logger = logging.getLogger(BEAT_LOGGER)
    with _lock:
        for existing in logger.filters:
            if isinstance(existing, TickToDebug):
                if entry not in existing.entries:
                    existing.entries = existing.entries | {entry}
                return existing
        installed = TickToDebug(frozenset({entry}))
        logger.addFilter(installed)
        return installed


__all__ = ["BEAT_LOGGER", "TickToDebug", "install"]
