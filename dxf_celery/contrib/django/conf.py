"""Settings glue: ``DATABASES`` entries as SQLAlchemy URLs, the project's DXF, task type discovery.

Django projects configure Celery with ``app.config_from_object("django.conf:settings",
namespace="CELERY")``, so DXF settings are written ``CELERY_DXF_DATABASE_URL`` and friends.
``DXF_DATABASE_ALIAS`` (default ``"default"``, ``None`` = DXF has a database of its own) names
the ``DATABASES`` entry that holds the DXF tables: ``manage.py migrate`` creates them there,
submits inside ``transaction.atomic(using=alias)`` join that transaction, and DXF follows the
alias to its test database under the test runner.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from sqlalchemy.engine import URL

from dxf_celery.app import DXF
from dxf_celery.settings import DXFConfigError

logger = logging.getLogger(__name__)

#: Module looked up in every installed app by :func:`autodiscover_task_types`.
TASK_TYPES_MODULE = "dxf_tasks"

_DRIVERS = {
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.contrib.gis.db.backends.postgis": "postgresql+psycopg",
    "django.db.backends.mysql": "mysql+pymysql",
    "django.contrib.gis.db.backends.mysql": "mysql+pymysql",
    "django.db.backends.sqlite3": "sqlite",
}


def database_url(alias: str = "default", databases: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The SQLAlchemy URL of Django's ``DATABASES[alias]`` (PostgreSQL, MySQL/MariaDB, SQLite).

    Call it in settings.py with ``databases=DATABASES`` (settings are not loaded yet there),
    or later without it.
    """
    if databases is None:
        from django.conf import settings

        databases = settings.DATABASES
    try:
        db = databases[alias]
    except KeyError:
        raise DXFConfigError(f"DATABASES has no {alias!r} entry; pass an alias that exists") from None
    engine = str(db.get("ENGINE", ""))
    driver = _DRIVERS.get(engine)
    if driver is None:
        raise DXFConfigError(
            f"DATABASES[{alias!r}] uses {engine!r}, which dxf-celery cannot map; set CELERY_DXF_DATABASE_URL "
            f"to a SQLAlchemy URL yourself"
        )
    name = str(db.get("NAME") or "")
    if driver == "sqlite":
        if not name or name == ":memory:" or "mode=memory" in name:  # Django's test default is a memory URI
            raise DXFConfigError("an in-memory SQLite database cannot be shared with workers; use a file")
        return f"sqlite:///{name}"
    port = db.get("PORT")
    url = URL.create(
        driver,
        username=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=int(port) if port else None,
        database=name or None,
    )
    return url.render_as_string(hide_password=False)


def autodiscover_task_types(module_name: str = TASK_TYPES_MODULE) -> list[str]:
    """Import ``<app>.dxf_tasks`` of every installed app that has one; returns the modules imported."""
    imported = []
    for config in apps.get_app_configs():
        name = f"{config.name}.{module_name}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise  # the module exists but one of its own imports is missing
            continue
        imported.append(name)
    if imported:
        logger.info("dxf task types loaded from %s", ", ".join(imported))
    return imported


def get_dxf() -> DXF:
    """The DXF of the project's Celery app (``settings.DXF_CELERY_APP`` or Celery's current app)."""
    from celery import current_app
    from django.conf import settings

    path = getattr(settings, "DXF_CELERY_APP", None)
    if path:
        from kombu.utils.imports import symbol_by_name

        celery_app = symbol_by_name(path)
    else:
        celery_app = current_app
    dxf = getattr(celery_app, "dxf", None)
    if not isinstance(dxf, DXF):
        raise DXFConfigError(
            f"Celery app {celery_app.main!r} has no DXF: call DXF(app) in your celery.py and set "
            f"DXF_CELERY_APP = 'proj.celery:app' in settings"
        )
    return dxf


#: Django setting naming the ``DATABASES`` alias of the DXF tables (``None``: not in ``DATABASES``).
ALIAS_SETTING = "DXF_DATABASE_ALIAS"


def configured_alias() -> str | None:
    """``settings.DXF_DATABASE_ALIAS`` (default ``"default"``), or None when DXF has its own database."""
    from django.conf import settings

    alias = getattr(settings, ALIAS_SETTING, "default")
    if alias is None:
        return None
    if alias not in settings.DATABASES:
        raise DXFConfigError(f"{ALIAS_SETTING} = {alias!r} is not a DATABASES entry; name one, or set it to None")
    return str(alias)


def database_key(url: str) -> tuple[str, str, int | None, str] | None:
    """What identifies a database in a URL (backend, host, port, name), or None if it cannot be parsed."""
    import os

    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None
    name = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        return ("sqlite", "", None, os.path.abspath(name) if name and name != ":memory:" else name)
    backend = "mysql" if parsed.get_backend_name() in ("mysql", "mariadb") else parsed.get_backend_name()
    default_port = {"postgresql": 5432, "mysql": 3306}.get(backend)
    host = parsed.host or "localhost"
    if host == "127.0.0.1":
        host = "localhost"
    return (backend, host, parsed.port or default_port, name)


def settings_dict_url(settings_dict: Mapping[str, Any]) -> str | None:
    """:func:`database_url` of one connection's settings, or None when DXF cannot use it."""
    try:
        return database_url("x", {"x": settings_dict})
    except DXFConfigError:
        return None


def dxf_uses_alias(dxf: DXF, alias: str) -> bool:
    """True when ``dxf``'s database is the database of ``DATABASES[alias]`` (as connected now)."""
    from django.db import connections

    url = settings_dict_url(connections[alias].settings_dict)
    return url is not None and database_key(url) == database_key(dxf.settings.database_url)
