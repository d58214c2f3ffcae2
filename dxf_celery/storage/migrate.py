"""Alembic migrations shipped inside the package, with their own version table.

The version table is ``dxf_alembic_version`` so dxf's lineage never collides with an
application's own Alembic history in the same database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from dxf_celery.errors import StorageSchemaError, StorageUnavailableError
from dxf_celery.storage.engine import safe_url, translated_errors

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


def _parsed(url: str | URL) -> URL:
    try:
        return make_url(url)
    except Exception as err:
        raise StorageUnavailableError(
            "dxf_database_url is not a valid SQLAlchemy URL; "
            "use e.g. postgresql+psycopg://user:password@host:5432/dbname or sqlite:///path/dxf.db"
        ) from err


def migrate(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest).

    Driver errors come out as DXF errors naming the URL without its password.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    try:
        if isinstance(url, Engine):
            engine = url
            cfg = alembic_config(engine.url)
            assert isinstance(cfg, Config)
            with translated_errors(safe_url(engine.url), engine.url.password), engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            return
        parsed = _parsed(url)
        cfg = alembic_config(parsed)
        assert isinstance(cfg, Config)
        with translated_errors(safe_url(parsed), parsed.password):
            command.upgrade(cfg, revision)
    except CommandError as err:  # an unknown or unreachable revision: the caller's input, one line
        raise StorageSchemaError(f"cannot migrate to revision {revision!r}: {err}; use 'head'") from None


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Downgrade the database at ``url`` (default: drop every dxf table)."""
    from alembic import command
    from alembic.config import Config

    parsed = _parsed(url)
    cfg = alembic_config(parsed)
    assert isinstance(cfg, Config)
    with translated_errors(safe_url(parsed), parsed.password):
        command.downgrade(cfg, revision)
