"""Shared fixtures: real databases (SQLite, PostgreSQL, MariaDB), each test on clean tables.

``DXF_TEST_DATABASES`` (comma separated: sqlite,postgresql,mariadb) narrows the matrix; by
default every SQL test runs on all three. A server that is down fails the test: CI starts them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_taskexecutor_support import Cluster, cluster_fixture, param_factory_fixture

from dxf_celery.storage import TaskManager, migrate
from dxf_celery.storage.tables import metadata
from dxf_celery.taskexecutor import Param
from dxf_celery.testing import preserved_registrations

PG_ADMIN_URL = os.environ.get("DXF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("DXF_TEST_MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
TEST_DB_NAME = os.environ.get("DXF_TEST_DB_NAME", "dxf_test")
ALL_DATABASES = ("sqlite", "postgresql", "mariadb")
SELECTED = tuple(
    d.strip() for d in os.environ.get("DXF_TEST_DATABASES", ",".join(ALL_DATABASES)).split(",") if d.strip()
)


def _server_url(kind: str) -> str:
    if kind == "postgresql":
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB_NAME
    return MYSQL_ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB_NAME


_prepared: set[str] = set()


def _prepare_server_db(kind: str) -> str:
    """Create the test database once per session and migrate it to head."""
    url = _server_url(kind)
    if kind in _prepared:
        return url
    if kind == "postgresql":
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": TEST_DB_NAME}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{TEST_DB_NAME}"'))
    else:
        admin = create_engine(MYSQL_ADMIN_URL)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{TEST_DB_NAME}`"))
    admin.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DROP TABLE IF EXISTS {table.name}"))
        conn.execute(text("DROP TABLE IF EXISTS dxf_alembic_version"))
    engine.dispose()
    migrate(url)
    _prepared.add(kind)
    return url


def clean_tables(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def make_db_url(kind: str, tmp_path: Path) -> str:
    """A migrated, empty database of ``kind`` for one test."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'dxf.db'}"
        migrate(url)
        return url
    url = _prepare_server_db(kind)
    clean_tables(url)
    return url


@pytest.fixture(autouse=True)
def _task_types_restored() -> Iterator[None]:
    """Each test leaves the process's task-type registrations as it found them."""
    with preserved_registrations():
        yield


@pytest.fixture(params=[d for d in ALL_DATABASES if d in SELECTED])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> str:
    return make_db_url(db_kind, tmp_path)


@pytest.fixture
def task_manager(db_url: str) -> Iterator[TaskManager]:
    tm = TaskManager(db_url)
    yield tm
    tm.dispose()


# -- the executor tests' harness (tests/test_taskexecutor_support.py), shared by their modules


@pytest.fixture
def cluster(task_manager: TaskManager) -> Iterator[Cluster]:
    """Node Managers on one database (modules with their own ``cluster`` fixture override it)."""
    yield from cluster_fixture(task_manager)


@pytest.fixture
def make_param(task_manager: TaskManager) -> Callable[..., Param]:
    return param_factory_fixture(task_manager)
