"""Alembic migrations shipped inside the package, with their own version table.

The version table is ``dxf_alembic_version`` so dxf's lineage never collides with an
application's own Alembic history in the same database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

#: Alembic version table of dxf-celery (not ``alembic_version``, which the application may own).
VERSION_TABLE = "dxf_alembic_version"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str | URL) -> object:
    """An Alembic ``Config`` pointing at the shipped migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    cfg.set_main_option("version_table", VERSION_TABLE)
    return cfg


def migrate(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest)."""
    from alembic import command
    from alembic.config import Config

    if isinstance(url, Engine):
        engine = url
        cfg = alembic_config(engine.url)
        assert isinstance(cfg, Config)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return
    cfg = alembic_config(url)
    assert isinstance(cfg, Config)
    command.upgrade(cfg, revision)


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Downgrade the database at ``url`` (default: drop every dxf table)."""
    from alembic import command
    from alembic.config import Config

    cfg = alembic_config(url)
    assert isinstance(cfg, Config)
    command.downgrade(cfg, revision)
