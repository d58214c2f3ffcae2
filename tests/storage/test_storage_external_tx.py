"""TaskManager statements on a borrowed DB-API connection: the owner's commit or rollback decides."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from dxf_celery import handle
from dxf_celery.errors import TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.storage import TaskManager
from dxf_celery.storage.external_tx import BorrowedConnection, borrowed_engine, offline_sql, task_manager_on


@pytest.fixture
def raw_connection(db_kind: str, db_url: str) -> Iterator[tuple[str, Any]]:
    """An open DB-API connection in a transaction, owned by the test, plus its dialect URL."""
    url = make_url(db_url)
    if db_kind == "sqlite":
        # Opened as Django opens it: declared types are converted by the driver already.
        sqlite3.register_converter("datetime", lambda b: datetime.fromisoformat(b.decode()))
        raw: Any = sqlite3.connect(
            str(url.database),
            isolation_level="DEFERRED",
            check_same_thread=False,
            detect_types=sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES,
        )
        yield "sqlite://", raw
    elif db_kind == "postgresql":
        raw = psycopg.connect(dbname=url.database, user=url.username, host=url.host, port=url.port or 5432)
        yield "postgresql+psycopg://", raw
    else:
        import pymysql

        raw = pymysql.connect(database=url.database, user=url.username, host=url.host, port=url.port or 3306)
        yield "mysql+pymysql://", raw
    raw.close()


def test_rollback_and_commit_belong_to_the_owner(raw_connection: tuple[str, Any], db_url: str) -> None:
    dialect, raw = raw_connection
    borrowed = task_manager_on(borrowed_engine(dialect, lambda: raw))
    own = TaskManager(db_url)
    try:
        task = handle.submit_task(borrowed, "ext-1", "noop")
        seen = handle.get_task(borrowed, "ext-1")  # the owner's transaction sees it
        assert seen.id == task.id and isinstance(seen.create_time, datetime)
        raw.rollback()
        with pytest.raises(TaskNotFoundError):
            handle.get_task(own, "ext-1")
        handle.submit_task(borrowed, "ext-2", "noop")
        with pytest.raises(TaskAlreadyExistsError):
            borrowed.create_task("ext-2", "noop", 1) if dialect.startswith("sqlite") else _in_savepoint(raw, borrowed)
        raw.commit()
        assert handle.get_task(own, "ext-2").key == "ext-2"
    finally:
        own.dispose()


def _in_savepoint(raw: Any, tm: TaskManager) -> None:
    """A refused insert aborts a PostgreSQL transaction unless it ran in a savepoint (as the Django helper does)."""
    cur = raw.cursor()
    cur.execute("SAVEPOINT dup")
    try:
        tm.create_task("ext-2", "noop", 1)
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT dup")


def test_borrowed_connection_never_ends_the_owners_transaction(tmp_path: Path) -> None:
    raw = sqlite3.connect(str(tmp_path / "x.db"), isolation_level="DEFERRED")
    raw.execute("CREATE TABLE t (x INTEGER)")
    raw.commit()
    proxy = BorrowedConnection(raw)
    raw.execute("INSERT INTO t VALUES (1)")
    proxy.commit()
    proxy.rollback()
    proxy.close()
    assert raw.in_transaction  # neither ended it
    with pytest.raises(RuntimeError, match="autocommit"):
        proxy.autocommit = True
    raw.rollback()
    assert raw.execute("SELECT count(*) FROM t").fetchone() == (0,)
    raw.close()


def test_offline_sql_is_the_alembic_ddl() -> None:
    statements = offline_sql("postgresql+psycopg://", None, "0001")
    created = {s.split()[2] for s in statements if s.startswith("CREATE TABLE")}
    assert created == {
        "dxf_alembic_version",
        "dxf_lease",
        "dxf_node",
        "dxf_subtask",
        "dxf_subtask_history",
        "dxf_task",
        "dxf_task_history",
    }
    assert any(s.startswith("INSERT INTO dxf_alembic_version") and "'0001'" in s for s in statements)
    assert not any(s.upper() in ("BEGIN", "COMMIT") for s in statements)
