"""Submit inside the caller's Django transaction: the task exists iff the caller's rows do.

Inside ``transaction.atomic(using=alias)`` the task row is inserted through Django's own
connection (a savepoint around it, so a refused submit, e.g. a duplicate key, leaves the
caller's transaction usable). A rollback removes it with the business rows; a commit makes
both visible at once; the scheduler wake-up is sent on commit. Outside a transaction, or when
DXF's tables are not in the alias's database, it is the plain :meth:`DXF.submit_task`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from dxf_celery import handle
from dxf_celery.app import DXF
from dxf_celery.contrib.django.conf import configured_alias, dxf_uses_alias, get_dxf
from dxf_celery.proto import EMPTY_META, NORMAL_PRIORITY, ExtraParams, Task
from dxf_celery.settings import DXFConfigError
from dxf_celery.storage import TaskManager
from dxf_celery.storage.external_tx import borrowed_engine, task_manager_on

_engines: dict[str, Engine] = {}


def dialect_url(connection: Any) -> str:
    """The SQLAlchemy dialect+driver of a Django connection (nothing is dialled with it)."""
    vendor = connection.vendor
    if vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        return "postgresql+psycopg://" if is_psycopg3 else "postgresql+psycopg2://"
    if vendor == "mysql":
        return "mysql+mysqldb://"
    if vendor == "sqlite":
        return "sqlite://"
    raise DXFConfigError(f"dxf-celery cannot share Django's {vendor!r} connection; use PostgreSQL, MySQL or SQLite")


def _raw_connection(alias: str) -> Any:
    from django.db import connections

    conn = connections[alias]
    conn.ensure_connection()
    return conn.connection


def engine_for(alias: str) -> Engine:
    """An SQLAlchemy engine over Django's connection ``alias`` (the current thread's)."""
    from django.db import connections

    engine = _engines.get(alias)
    if engine is None:
        engine = borrowed_engine(dialect_url(connections[alias]), lambda: _raw_connection(alias))
        _engines[alias] = engine
    return engine


def task_manager_for(alias: str) -> TaskManager:
    """A TaskManager whose statements join Django's current transaction on ``alias``."""
    return task_manager_on(engine_for(alias))


def transaction_alias(dxf: DXF, using: str | None = None) -> str | None:
    """The alias whose open transaction a submit joins now, or None (no transaction, or DXF is elsewhere)."""
    from django.db import connections

    alias = using or configured_alias()
    if alias is None or not connections[alias].in_atomic_block:
        return None
    return alias if dxf_uses_alias(dxf, alias) else None


def submit_task(
    key: str,
    task_type: str,
    *,
    meta: bytes = EMPTY_META,
    concurrency: int = 1,
    priority: int = NORMAL_PRIORITY,
    target_scope: str = "",
    max_node_count: int = 0,
    extra_params: ExtraParams | None = None,
    using: str | None = None,
    dxf: DXF | None = None,
) -> Task:
    """Create a pending task, inside the caller's ``transaction.atomic()`` when there is one.

    ``using`` picks the Django alias (default ``DXF_DATABASE_ALIAS``); ``dxf`` the DXF (default
    :func:`get_dxf`). Arguments are those of :meth:`DXF.submit_task`.
    """
    from django.db import transaction

    dxf = dxf or get_dxf()
    alias = transaction_alias(dxf, using)
    fields: dict[str, Any] = {
        "meta": meta,
        "concurrency": concurrency,
        "priority": priority,
        "target_scope": target_scope,
        "max_node_count": max_node_count,
        "extra_params": extra_params,
    }
    if alias is None:
        return dxf.submit_task(key, task_type, **fields)
    with transaction.atomic(using=alias):
        task = handle.submit_task(task_manager_for(alias), key, task_type, **fields)
    transaction.on_commit(dxf.wake, using=alias)
    return task
