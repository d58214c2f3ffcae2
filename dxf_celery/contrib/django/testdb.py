"""DXF follows Django's test database: a test that submits never writes to the real tables.

Django's test runner (and pytest-django, which uses the same machinery) renames
``DATABASES[alias]["NAME"]`` to ``test_<name>`` and reconnects. When DXF's database *is* that
alias's database (the URL came from :func:`database_url`), the ``connection_created`` handler
below points the project's DXF at the new name before anything is written: the current
TaskManager is disposed and the next one opens on the test database. A DXF configured with a
database of its own is left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from dxf_celery.app import DXF
from dxf_celery.contrib.django.conf import database_key, get_dxf, settings_dict_url
from dxf_celery.settings import DXFConfigError

logger = logging.getLogger(__name__)

#: ``alias -> database key`` of each ``DATABASES`` entry as settings.py wrote it (before any test run).
_origins: dict[str, tuple[str, str, int | None, str] | None] = {}
#: ``alias -> database key`` DXF last followed it to (a test database, or a parallel runner's clone).
_following: dict[str, tuple[str, str, int | None, str] | None] = {}
#: Alias of the connection Django opens without a database (to create and drop test databases).
NO_DB_ALIAS = "__no_db__"


def record_origins() -> None:
    """Remember where every alias pointed when Django started (called from ``AppConfig.ready``)."""
    from django.conf import settings

    for alias, entry in settings.DATABASES.items():
        url = settings_dict_url(entry)
        _origins[alias] = database_key(url) if url else None


def retarget(dxf: DXF, url: str) -> None:
    """Point ``dxf`` at the database ``url`` from now on (this process only)."""
    dxf.state.retarget(url)


def follow_connection(connection: Any) -> None:
    """If DXF uses ``connection``'s alias as configured in settings, follow it to where it points now.

    When the alias now points at a database DXF cannot use (an in-memory SQLite test database),
    this raises :class:`DXFConfigError` rather than let tests write to the configured database.
    """
    origin = _origins.get(connection.alias)
    if origin is None:
        return
    now_url = settings_dict_url(connection.settings_dict)
    now_key = database_key(now_url) if now_url else None
    if now_key == origin:
        return
    try:
        dxf = get_dxf()
    except DXFConfigError:
        return  # no Celery app with DXF in this process: nothing to retarget
    current = database_key(dxf.settings.database_url)
    # Follow from the configured database, or on from the test database followed before (the
    # parallel runner's workers switch once more, to their clone of it).
    if current == now_key or (current != origin and current != _following.get(connection.alias)):
        return
    if now_url is None:
        raise DXFConfigError(
            f"DATABASES[{connection.alias!r}] now points at a database dxf-celery cannot share with workers "
            f"(an in-memory SQLite test database?), and DXF would keep writing to the configured one; set "
            f"DATABASES[{connection.alias!r}]['TEST']['NAME'] to a file"
        )
    logger.info(
        "dxf follows DATABASES[%r] to its test database %s", connection.alias, connection.settings_dict.get("NAME")
    )
    retarget(dxf, now_url)
    _following[connection.alias] = now_key


def release_test_database(connection: Any) -> None:
    """Close DXF's pooled connections when Django opens its maintenance ("no db") connection.

    Django opens that connection to create or drop a test database, and PostgreSQL refuses to
    drop a database that still has sessions: DXF's idle pool would be one. The pool reopens
    on the next use, so releasing it at other times costs a reconnect and nothing else.
    """
    if not _following or connection.alias != NO_DB_ALIAS:
        return
    try:
        get_dxf().state.dispose()
    except DXFConfigError:
        pass


def on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    """The ``connection_created`` receiver installed by :class:`DXFConfig`."""
    release_test_database(connection)
    follow_connection(connection)
