"""The one way the benchmarks get a database: created if missing, migrated, dxf tables empty.

Benchmarks run as ``python bench/<name>.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dxf_celery.storage import migrate
from dxf_celery.storage.tables import metadata


def ensure_server_database(url: str) -> None:
    """Create the database ``url`` names on a PostgreSQL or MySQL/MariaDB server (SQLite: nothing)."""
    parsed = make_url(url)
    backend, name = parsed.get_backend_name(), parsed.database
    if backend == "postgresql":
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    elif backend in ("mysql", "mariadb"):
        admin = create_engine(parsed.set(database="mysql"))
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}`"))
        admin.dispose()


def fresh_dxf_database(url: str) -> str:
    """Make ``url`` a migrated database whose dxf tables are empty; returns ``url``."""
    ensure_server_database(url)
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return url
