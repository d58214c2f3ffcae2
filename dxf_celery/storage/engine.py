"""Engines tuned per database, and the translation of driver errors into DXF errors.

SQLite needs the most care: WAL so readers never block the writer, a busy timeout, and
``BEGIN IMMEDIATE`` for write transactions so two writers queue on the lock instead of
failing when a read lock cannot be upgraded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from dxf_celery.errors import DXFError, StorageDataError, StorageSchemaError, StorageUnavailableError
from dxf_celery.errors import is_transient_error as is_transient_dxf_error

T = TypeVar("T")

#: Seconds SQLite waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT = 30.0
#: A transaction that hit a deadlock or serialization failure is replayed this many times.
DEADLOCK_RETRIES = 8

__all__ = [
    "StorageDataError",
    "StorageSchemaError",
    "build_engines",
    "is_memory_sqlite",
    "is_sqlite",
    "is_transient_error",
    "run_transaction",
    "safe_url",
    "translate",
]


def safe_url(url: str | URL) -> str:
    """The URL as text with its password masked, fit for error messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        # Not parseable, so we cannot tell where a password would be: show nothing of it.
        return "<unparseable database URL>"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_memory_sqlite(engine: Engine) -> bool:
    """True for ``sqlite://`` (one shared in-memory connection that needs serialised use)."""
    return is_sqlite(engine) and engine.url.database in (None, "", ":memory:")


_DRIVER_HINTS = {
    "postgresql": "pip install 'dxf-celery[postgres]' (psycopg 3; use postgresql+psycopg://)",
    "mysql": "pip install 'dxf-celery[mysql]' (PyMySQL; use mysql+pymysql://)",
    "mariadb": "pip install 'dxf-celery[mysql]' (PyMySQL; use mariadb+pymysql://)",
}


def build_engines(url: str | URL) -> tuple[Engine, Engine]:
    """Return ``(read_engine, write_engine)`` for ``url``; they are the same but on SQLite.

    A malformed URL or a missing driver is reported as :class:`StorageUnavailableError`
    saying what to fix, instead of SQLAlchemy's or the import system's own exception.
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as err:
        raise StorageUnavailableError(
            f"dxf_database_url is not a valid SQLAlchemy URL ({type(url).__name__} given); "
            f"use e.g. postgresql+psycopg://user:password@host:5432/dbname or sqlite:///path/dxf.db"
        ) from err
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                engine = _sqlite_engine(parsed, immediate=True)
                return engine, engine
            return _sqlite_engine(parsed, immediate=False), _sqlite_engine(parsed, immediate=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
        if backend in ("mysql", "mariadb"):
            # READ COMMITTED avoids InnoDB gap locks, the usual cause of insert deadlocks.
            kwargs["isolation_level"] = "READ COMMITTED"
            kwargs["pool_recycle"] = 3600
        engine = create_engine(parsed, **kwargs)
        return engine, engine
    except (sa_exc.NoSuchModuleError, ImportError) as err:
        hint = _DRIVER_HINTS.get(backend, "install the DBAPI driver named in the URL")
        raise StorageUnavailableError(f"no database driver for {safe_url(parsed)} ({err}); {hint}") from err
    except sa_exc.ArgumentError as err:
        raise StorageUnavailableError(f"cannot build an engine for {safe_url(parsed)}: {err}") from err


def _sqlite_engine(url: URL, *, immediate: bool) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        # One shared connection, or every thread would see its own empty database.
        engine = create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT}
        )
    else:
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
            pool_size=10,
            max_overflow=20,
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Take transaction control away from the sqlite3 module, which begins lazily.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


_DEADLOCK_MARKERS = (
    "deadlock",  # PostgreSQL 40P01, MySQL 1213
    "could not serialize",  # PostgreSQL 40001
    "lock wait timeout",  # MySQL 1205
    "database is locked",  # SQLite past its busy timeout
    "database table is locked",
)
_MISSING_TABLE_MARKERS = ("no such table", "doesn't exist", "does not exist", "undefinedtable")
_MISSING_COLUMN_MARKERS = ("no such column", "unknown column", "has no column")


def is_transient_error(err: BaseException) -> bool:
    """:func:`dxf_celery.errors.is_transient_error`, plus raw driver errors: lost connections, deadlocks, locks.

    The TaskManager never lets a raw driver error out; this is for code with its own engine.
    """
    if isinstance(err, sa_exc.DBAPIError):
        if err.connection_invalidated:
            return True
        text = str(err.orig).lower()
        if any(m in text for m in _DEADLOCK_MARKERS):
            return True
        return isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return is_transient_dxf_error(err)


def is_deadlock(err: sa_exc.DBAPIError) -> bool:
    """A deadlock, serialization failure or lock timeout: the transaction may simply be replayed."""
    text = str(err.orig).lower()
    return any(m in text for m in _DEADLOCK_MARKERS)


def _scrub(text: str, password: str | None) -> str:
    """Remove a password from a driver message, should a driver ever echo it."""
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())  # one line: driver messages span several


def translate(err: sa_exc.DBAPIError, url: str, password: str | None = None) -> DXFError:
    """Turn a driver error into a DXF error that says what to check.

    ``url`` must already be masked (:func:`safe_url`); ``password``, when given, is scrubbed
    from the driver's text so the message can go to logs as it is.
    """
    text = _scrub(str(err.orig), password)
    lowered = text.lower()
    missing_table = any(m in lowered for m in _MISSING_TABLE_MARKERS) and ("table" in lowered or "relation" in lowered)
    missing_column = any(m in lowered for m in _MISSING_COLUMN_MARKERS) or (
        "column" in lowered and "does not exist" in lowered
    )
    if isinstance(err, (sa_exc.ProgrammingError, sa_exc.OperationalError)) and (missing_table or missing_column):
        return StorageSchemaError(
            f"the dxf tables are missing or out of date in {url} ({text}); create or upgrade them with "
            f"`celery -A <app> dxf migrate` or dxf_celery.storage.migrate(url)"
        )
    if isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError)) or err.connection_invalidated:
        return StorageUnavailableError(
            f"cannot use the database at {url} ({text}). Check that the server is running and "
            f"reachable, and that dxf_database_url (host, port, user, password, database) is right."
        )
    if isinstance(err, (sa_exc.DataError, sa_exc.ProgrammingError, sa_exc.NotSupportedError)):
        # Retrying cannot help: the same statement with the same values fails again.
        return StorageDataError(f"the database at {url} refused the statement ({text}); check the values passed in")
    return StorageUnavailableError(f"database error at {url}: {text}")


@contextmanager
def translated_errors(url: str, password: str | None = None) -> Iterator[None]:
    """Re-raise driver errors (except integrity errors, which callers handle) as DXF errors."""
    try:
        yield
    except sa_exc.IntegrityError:
        raise
    except sa_exc.DBAPIError as err:
        raise translate(err, url, password) from err
    except sa_exc.TimeoutError as err:
        raise StorageUnavailableError(
            f"no free connection to {url} in the pool ({err}); too many threads use one TaskManager at once"
        ) from err


def run_transaction(engine: Engine, url: str, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in one transaction, replaying it on deadlocks, translating other errors."""
    delay = 0.01
    password = engine.url.password
    for attempt in range(DEADLOCK_RETRIES):
        try:
            with translated_errors(url, password if isinstance(password, str) else None), engine.begin() as conn:
                return fn(conn)
        except StorageUnavailableError as err:
            cause = err.__cause__
            if isinstance(cause, sa_exc.DBAPIError) and is_deadlock(cause) and attempt < DEADLOCK_RETRIES - 1:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover
