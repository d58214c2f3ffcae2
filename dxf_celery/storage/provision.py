"""Databases for tests and benchmarks: create one on its server if missing, empty the dxf tables.

Users' own test suites need the same two steps as this project's tests and benchmarks (a
server database that may not exist yet; clean tables before each test), so they live here
once instead of in every conftest.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dxf_celery.storage.migrate import migrate
from dxf_celery.storage.tables import metadata

__all__ = ["drop_database", "drop_dxf_tables", "empty_dxf_tables", "ensure_database", "fresh_dxf_database"]


def ensure_database(url: str) -> None:
    """Create the database ``url`` names on a PostgreSQL or MySQL/MariaDB server (SQLite: nothing)."""
    parsed = make_url(url)
    backend, name = parsed.get_backend_name(), parsed.database
    if not name or backend not in ("postgresql", "mysql", "mariadb"):
        return
    if backend == "postgresql":
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{_identifier(name)}"'))
    else:
        admin = create_engine(parsed.set(database="mysql"))
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{_identifier(name)}`"))
    admin.dispose()


def drop_database(url: str) -> None:
    """Drop the database ``url`` names on its server if it exists (SQLite: delete the file).

    PostgreSQL: other sessions still connected to it are ended first (a benchmark's workers
    that did not exit cleanly must not keep a throwaway database alive).
    """
    parsed = make_url(url)
    backend, name = parsed.get_backend_name(), parsed.database
    if not name:
        return
    if backend == "sqlite":
        if name != ":memory:" and os.path.exists(name):
            os.remove(name)
        return
    if backend == "postgresql":
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_identifier(name)}"'))
    elif backend in ("mysql", "mariadb"):
        admin = create_engine(parsed.set(database="mysql"))
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{_identifier(name)}`"))
    else:
        return
    admin.dispose()


def empty_dxf_tables(url: str) -> None:
    """Delete every row of the dxf tables (children first), keeping the schema."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def drop_dxf_tables(url: str) -> None:
    """Drop the dxf tables and their migration version table (a schema from scratch next time)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DROP TABLE IF EXISTS {table.name}"))
        conn.execute(text("DROP TABLE IF EXISTS dxf_alembic_version"))
    engine.dispose()


def fresh_dxf_database(url: str) -> str:
    """Make ``url`` a migrated database whose dxf tables are empty; returns ``url``."""
    ensure_database(url)
    migrate(url)
    empty_dxf_tables(url)
    return url


def _identifier(name: str) -> str:
    # DDL cannot take a bound parameter for a name; only plain names are accepted.
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"database name {name!r}: use letters, digits, '_' or '-'")
    return name
