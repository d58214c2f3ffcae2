"""A Django migration operation that applies one of dxf-celery's Alembic revisions.

The DXF schema has one source of truth, the Alembic revisions in ``dxf_celery/storage/
migrations``, which ``celery dxf migrate`` also applies. Each Django migration of this app
wraps one revision: ``migrate`` runs it on Django's own connection, inside the migration's
transaction, on the ``DXF_DATABASE_ALIAS`` database only; ``sqlmigrate`` prints the SQL
Alembic would run (DDL and the ``dxf_alembic_version`` write); running it where the tables
already exist at that revision (created earlier by ``celery dxf migrate``) changes nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.migrations.operations.base import Operation

from dxf_celery.contrib.django.conf import configured_alias, dxf_uses_alias, get_dxf
from dxf_celery.settings import DXFConfigError


def _applies_to(schema_editor: Any, app_label: str) -> tuple[bool, str]:
    """Whether this alias holds the DXF tables, and why not when it does not."""
    connection = schema_editor.connection
    alias = connection.alias
    if configured_alias() != alias:
        return False, f"DXF_DATABASE_ALIAS is {configured_alias()!r}, not {alias!r}"
    if not router.allow_migrate(alias, app_label):
        return False, f"the database routers do not migrate {app_label} on {alias!r}"
    from dxf_celery.contrib.django.testdb import follow_connection

    follow_connection(connection)
    try:
        dxf = get_dxf()
    except DXFConfigError:
        return True, ""  # no DXF in this process: the alias setting decides
    if not dxf_uses_alias(dxf, alias):
        return False, "dxf_database_url names another database (migrate it with `manage.py dxf migrate`)"
    return True, ""


class AlembicRevision(Operation):  # type: ignore[misc]  # Django ships no type hints
    """Apply (forwards) or undo (backwards) the Alembic revision ``revision`` of dxf-celery."""

    reversible = True
    reduces_to_sql = True

    def __init__(self, revision: str, down_revision: str | None) -> None:
        self.revision = revision
        self.down_revision = down_revision

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (
            f"{__name__}.{type(self).__name__}",
            [],
            {"revision": self.revision, "down_revision": self.down_revision},
        )

    def state_forwards(self, app_label: str, state: Any) -> None:
        """The tables are unmanaged models: the Django state is in the CreateModel operations."""

    def describe(self) -> str:
        return f"Apply dxf-celery's Alembic revision {self.revision} (the DXF tables)"

    @property
    def migration_name_fragment(self) -> str:
        return f"dxf_alembic_{self.revision}"

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        self._run(app_label, schema_editor, forwards=True)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        self._run(app_label, schema_editor, forwards=False)

    def _run(self, app_label: str, schema_editor: Any, *, forwards: bool) -> None:
        from dxf_celery.contrib.django.transactional import dialect_url, engine_for
        from dxf_celery.storage import external_tx

        applies, why = _applies_to(schema_editor, app_label)
        if schema_editor.collect_sql:
            if not applies:
                schema_editor.collected_sql.append(f"-- nothing to do on this database: {why}")
                return
            url = dialect_url(schema_editor.connection)
            if forwards:
                statements = external_tx.offline_sql(url, self.down_revision, self.revision)
            else:
                statements = external_tx.offline_downgrade_sql(url, self.revision, self.down_revision)
            schema_editor.collected_sql.extend(f"{statement};" for statement in statements)
            return
        if not applies:
            return
        engine = engine_for(schema_editor.connection.alias)
        if forwards:
            external_tx.upgrade_on(engine, self.revision)
        else:
            external_tx.downgrade_on(engine, self.down_revision or "base")
