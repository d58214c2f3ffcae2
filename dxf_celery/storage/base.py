"""The base every storage mixin stands on: engines, sessions (transactions) and retries.

``TaskManager`` is composed of one mixin per concern (tasks, transitions, step switch,
executor-side and scheduler-side subtasks, history, nodes, leases); each reaches the
database only through :meth:`StorageBase._write` and :meth:`StorageBase._read`, which run a
function in one transaction and replay it on deadlocks (see ``storage.engine``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from dxf_celery.storage.engine import build_engines, is_memory_sqlite, run_transaction, safe_url

T = TypeVar("T")


def utcnow() -> datetime:
    """This machine's naive-UTC now: for display only; what orders or judges uses :meth:`StorageBase.server_time`."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StorageBase:
    """Owns the read and write engines and runs every transaction."""

    def __init__(self, url_or_engine: str | URL | Engine) -> None:
        if isinstance(url_or_engine, Engine):
            self.read_engine = self.write_engine = url_or_engine
        else:
            self.read_engine, self.write_engine = build_engines(url_or_engine)
        self.url = safe_url(self.write_engine.url)
        # ``sqlite://`` is one shared connection: transactions from two threads would interleave.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if is_memory_sqlite(self.write_engine) else contextlib.nullcontext()
        )

    def _write(self, fn: Callable[[Connection], T]) -> T:
        with self._lock:
            return run_transaction(self.write_engine, self.url, fn)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        with self._lock:
            return run_transaction(self.read_engine, self.url, fn)

    def server_time(self) -> datetime:
        """The database server's naive-UTC now (the one clock every stored time is stamped with)."""
        from dxf_celery.storage.clock import read_server_now

        return self._read(read_server_now)

    def dispose(self) -> None:
        """Close every pooled connection (call before forking or at shutdown)."""
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()

    def create_tables(self) -> None:
        """Create the tables straight from the metadata (tests; production uses :func:`migrate`)."""
        from dxf_celery.storage.tables import metadata

        metadata.create_all(self.write_engine)
