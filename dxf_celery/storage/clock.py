"""One clock: the database server's, for every time that orders or judges.

Rank tie-breaks (``create_time``), heartbeats, lease expiry and the state-update times
liveness reads are compared across machines; a client clock that is a few milliseconds
(or minutes) off would let equal-priority tasks preempt each other or judge a live node
dead. Statements use :func:`server_now` instead of a Python ``datetime`` so the database
stamps them, and :meth:`server_time` reads the same clock for the rare comparison that has
to happen in Python. Every timestamp column holds naive UTC, so each dialect is asked for
UTC without a zone, with microseconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from dxf_celery.storage.tables import Timestamp

__all__ = ["read_server_now", "server_now"]


class server_now(FunctionElement[datetime]):  # lower case: it reads as the SQL function it stands for
    """``now()`` in naive UTC with microseconds, spelt the way each dialect needs it."""

    type = Timestamp
    inherit_cache = True
    name = "dxf_server_now"


@compiles(server_now)
def _default(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(server_now, "postgresql")
def _postgresql(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    # statement_timestamp(), not now(): now() is frozen at the start of the transaction.
    return "(statement_timestamp() AT TIME ZONE 'UTC')"


@compiles(server_now, "mysql")
@compiles(server_now, "mariadb")
def _mysql(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(server_now, "sqlite")
def _sqlite(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy's SQLite DateTime stores 'YYYY-MM-DD HH:MM:SS.ffffff'; %f gives SS.SSS.
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def read_server_now(conn: Connection) -> datetime:
    """The database server's current naive-UTC time, read through ``conn``."""
    value = conn.execute(select(server_now())).scalar_one()
    if isinstance(value, str):  # SQLite hands back text for a bare expression
        value = datetime.fromisoformat(value)
    return value
