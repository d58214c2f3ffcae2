"""Run TaskManager statements on a DB-API connection that someone else owns (e.g. Django's).

A web framework's transaction is a DB-API connection with an open transaction. Wrapping it in
an SQLAlchemy engine lets the existing TaskManager code (``create_task``, the reads) run inside
that transaction unchanged, so a task exists exactly when the caller's rows exist. The wrapper
makes sure SQLAlchemy never ends the owner's transaction: ``commit``, ``rollback`` and
``close`` are ignored, and switching ``autocommit`` is refused. The owner commits or rolls back.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, create_engine
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dxf_celery.storage import TaskManager
from dxf_celery.storage.migrate import VERSION_TABLE, alembic_config

__all__ = [
    "BorrowedConnection",
    "borrowed_engine",
    "downgrade_on",
    "offline_sql",
    "task_manager_in",
    "task_manager_on",
    "upgrade_on",
]


class BorrowedConnection:
    """A DB-API connection proxy whose transaction and lifetime stay with its owner."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Any) -> None:
        object.__setattr__(self, "_raw", raw)

    def commit(self) -> None:
        """Ignored: the owner commits."""

    def rollback(self) -> None:
        """Ignored: the owner rolls back (a failed statement surfaces as an exception instead)."""

    def close(self) -> None:
        """Ignored: the owner closes its connection."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "autocommit":
            raise RuntimeError(
                "refusing to change autocommit on a borrowed connection (it would end the owner's transaction)"
            )
        setattr(self._raw, name, value)


def borrowed_engine(url: str, get_connection: Callable[[], Any]) -> Engine:
    """An engine whose every checkout is ``get_connection()`` (the owner's current DB-API connection).

    ``url`` only names the dialect and driver of that connection (e.g. ``postgresql+psycopg://``);
    nothing is ever dialled. ``NullPool`` keeps no connection, so the engine may be cached and
    shared: each checkout asks ``get_connection`` again (Django's connections are per thread).
    """
    kwargs: dict[str, Any] = {}
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        # The psycopg dialect would look the hstore type up through the connection's real class.
        kwargs["use_native_hstore"] = False
    engine = create_engine(url, creator=lambda: BorrowedConnection(get_connection()), poolclass=NullPool, **kwargs)
    if backend == "sqlite":
        # The owner may have opened its sqlite3 connection with detect_types (Django does), so
        # DATETIME columns can arrive already parsed.
        engine.dialect.colspecs = {**engine.dialect.colspecs, sqltypes.DateTime: _ParsedOrTextDateTime}
    return engine


class _ParsedOrTextDateTime(sqlite.DATETIME):
    """SQLite DATETIME that accepts a value the driver already converted to ``datetime``."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        parse = super().result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            if value is None or isinstance(value, datetime):
                return value
            return parse(value) if parse is not None else value

        return process


_current_raw: contextvars.ContextVar[Any] = contextvars.ContextVar("dxf_borrowed_dbapi_connection")
_sqla_engines: dict[str, Engine] = {}


@contextmanager
def task_manager_in(connection: Connection) -> Iterator[TaskManager]:
    """A TaskManager whose statements join ``connection``'s open transaction (SQLAlchemy users).

    ``connection`` is the caller's SQLAlchemy Connection (``engine.begin()``, or an ORM
    ``session.connection()``) on the database of the DXF tables. Its transaction must be open:
    the caller commits or rolls back, and the task goes with it.
    """
    if not connection.in_transaction():
        raise ValueError("the connection has no open transaction: use engine.begin() or session.begin() first")
    driver = connection.engine.url.drivername
    engine = _sqla_engines.get(driver)
    if engine is None:
        engine = _sqla_engines[driver] = borrowed_engine(f"{driver}://", _current_raw.get)
    token = _current_raw.set(connection.connection.dbapi_connection)
    try:
        yield task_manager_on(engine)
    finally:
        _current_raw.reset(token)


def task_manager_on(engine: Engine) -> TaskManager:
    """A TaskManager whose statements run in the transaction of ``engine``'s borrowed connection."""
    return TaskManager(engine)


def upgrade_on(engine: Engine, revision: str = "head") -> None:
    """Alembic upgrade of the DXF tables inside the owner's transaction."""
    from dxf_celery.storage import migrate

    migrate(engine, revision)


def downgrade_on(engine: Engine, revision: str) -> None:
    """Alembic downgrade of the DXF tables inside the owner's transaction."""
    from alembic import command
    from alembic.config import Config

    cfg = alembic_config(engine.url)
    assert isinstance(cfg, Config)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def offline_sql(dialect_url: str, from_revision: str | None, to_revision: str) -> list[str]:
    """The SQL Alembic would run from ``from_revision`` (None = empty) to ``to_revision``, as statements.

    Used to show the truth in ``sqlmigrate``: the DDL plus the writes to the version table.
    """
    import io

    from alembic import command
    from alembic.config import Config

    buffer = io.StringIO()
    cfg = alembic_config(dialect_url)
    assert isinstance(cfg, Config)
    cfg.output_buffer = buffer
    command.upgrade(cfg, f"{from_revision or 'base'}:{to_revision}", sql=True)
    return _statements(buffer.getvalue())


def offline_downgrade_sql(dialect_url: str, from_revision: str, to_revision: str | None) -> list[str]:
    """The SQL of an Alembic downgrade from ``from_revision`` to ``to_revision`` (None = empty)."""
    import io

    from alembic import command
    from alembic.config import Config

    buffer = io.StringIO()
    cfg = alembic_config(dialect_url)
    assert isinstance(cfg, Config)
    cfg.output_buffer = buffer
    command.downgrade(cfg, f"{from_revision}:{to_revision or 'base'}", sql=True)
    return _statements(buffer.getvalue())


def _statements(script: str) -> list[str]:
    """Split Alembic's offline script into statements, without its own BEGIN/COMMIT."""
    statements = []
    for chunk in script.split(";\n"):
        lines = [line for line in chunk.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        text = "\n".join(lines).strip().rstrip(";")
        if text and text.upper() not in ("BEGIN", "COMMIT", "BEGIN TRANSACTION"):
            statements.append(text)
    return statements


#: The version table Alembic keeps next to the DXF tables (reported by the Django migration).
ALEMBIC_VERSION_TABLE = VERSION_TABLE
