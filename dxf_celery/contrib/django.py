"""Django integration: an AppConfig that registers task types, and helpers for settings.

Django projects configure Celery with ``app.config_from_object("django.conf:settings",
namespace="CELERY")``, so DXF settings are written ``CELERY_DXF_DATABASE_URL`` and friends.
Add ``"dxf_celery.contrib.django.DXFConfig"`` to ``INSTALLED_APPS`` and:

- every installed app's ``dxf_tasks`` module is imported when Django starts (in the web
  process and in every worker), which is where a project registers its task types;
- :func:`database_url` turns a ``DATABASES`` entry into the SQLAlchemy URL DXF needs, so
  the DXF tables can live in the project's own database:
  ``CELERY_DXF_DATABASE_URL = database_url("default")`` in settings.py;
- :func:`get_dxf` returns the DXF of the project's Celery app (``DXF_CELERY_APP =
  "proj.celery:app"`` in settings, or Celery's current app) for views and management code.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

from django.apps import AppConfig, apps
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
        if not name or name == ":memory:":
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


class DXFConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """``INSTALLED_APPS += ["dxf_celery.contrib.django.DXFConfig"]``."""

    name = "dxf_celery.contrib.django"
    label = "dxf_celery"
    verbose_name = "dxf-celery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        autodiscover_task_types()
