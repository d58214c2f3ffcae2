"""The databases every SQL test runs on: SQLite, PostgreSQL and MariaDB, each test on clean tables.

``DXF_TEST_DATABASES`` (comma separated: sqlite,postgresql,mariadb) narrows the matrix;
``DXF_TEST_DB_NAME`` names the server databases (so two runs at once stay apart). A server
that is down fails the test: .ci/run starts them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

from dxf_celery.storage import migrate
from dxf_celery.storage.provision import drop_dxf_tables, empty_dxf_tables, ensure_database

PG_ADMIN_URL = os.environ.get("DXF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("DXF_TEST_MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
TEST_DB_NAME = os.environ.get("DXF_TEST_DB_NAME", "dxf_test")
ALL_DATABASES = ("sqlite", "postgresql", "mariadb")
SELECTED = tuple(
    d.strip() for d in os.environ.get("DXF_TEST_DATABASES", ",".join(ALL_DATABASES)).split(",") if d.strip()
)

_prepared: set[str] = set()


def server_url(kind: str) -> str:
    """The URL of this run's test database on the ``kind`` server ("postgresql" or "mariadb")."""
    admin = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
    return admin.rsplit("/", 1)[0] + "/" + TEST_DB_NAME


def _prepare_server_db(kind: str) -> str:
    """Create the test database once per session, with a schema migrated from scratch."""
    url = server_url(kind)
    if kind not in _prepared:
        ensure_database(url)
        drop_dxf_tables(url)
        migrate(url)
        _prepared.add(kind)
    return url


def make_db_url(kind: str, tmp_path: Path) -> str:
    """A migrated, empty database of ``kind`` for one test."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'dxf.db'}"
        migrate(url)
        return url
    url = _prepare_server_db(kind)
    empty_dxf_tables(url)
    return url


def _pg_admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


@contextlib.contextmanager
def throwaway_postgres_database(suffix: str, *, also_drop: tuple[str, ...] = ()) -> Iterator[str]:
    """A new, empty PostgreSQL database ``<DXF_TEST_DB_NAME>_<suffix>`` (its name), dropped after.

    ``also_drop`` names databases derived from it (e.g. Django's ``test_<name>``) dropped too.
    """
    name = f"{TEST_DB_NAME}_{suffix}"
    for db in (*also_drop, name):
        _pg_admin(f'DROP DATABASE IF EXISTS "{db.format(name=name)}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
