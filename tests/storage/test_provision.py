"""``provision.drop_database``: a database made by ``fresh_dxf_database`` is gone after, on each kind of server.

PostgreSQL refuses to drop a database someone is connected to: the drop ends those sessions
first (a benchmark worker that did not exit must not keep its throwaway database alive).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.db import MYSQL_ADMIN_URL, PG_ADMIN_URL, SELECTED, TEST_DB_NAME
from sqlalchemy import create_engine, text

from dxf_celery.storage.provision import drop_database, fresh_dxf_database


def _server_url(kind: str) -> str:
    admin = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
    return admin.rsplit("/", 1)[0] + f"/{TEST_DB_NAME}_drop"


def _exists(kind: str, name: str) -> bool:
    admin = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
    engine = create_engine(admin.rsplit("/", 1)[0] + ("/postgres" if kind == "postgresql" else "/mysql"))
    query = (
        "SELECT 1 FROM pg_database WHERE datname = :n"
        if kind == "postgresql"
        else "SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"
    )
    try:
        with engine.connect() as conn:
            return conn.execute(text(query), {"n": name}).first() is not None
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", [k for k in ("postgresql", "mariadb") if k in SELECTED])
def test_drop_database_removes_a_server_database_even_with_a_session_open(kind: str) -> None:
    url = fresh_dxf_database(_server_url(kind))
    name = url.rsplit("/", 1)[1]
    assert _exists(kind, name)
    holder = create_engine(url)
    conn = holder.connect()  # a session left open, as by a worker that did not exit
    try:
        if kind == "mariadb":
            conn.close()  # MariaDB drops under open sessions anyway; nothing to end
        drop_database(url)
        assert not _exists(kind, name)
        drop_database(url)  # already gone: nothing to do, no error
    finally:
        if not conn.closed:
            conn.invalidate()  # its session was ended by the drop
        holder.dispose()


def test_drop_database_deletes_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "bench.db"
    url = fresh_dxf_database(f"sqlite:///{path}")
    assert path.exists()
    drop_database(url)
    assert not path.exists()
    drop_database(url)
