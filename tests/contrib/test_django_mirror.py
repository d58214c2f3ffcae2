"""The Django migrations mirror the Alembic revisions, one for one, column for column.

Fast and without a database or configured Django settings (Django may be configured once per
process, by tests/contrib/test_contrib.py): the migration modules are imported and their
operations replayed into a Django ``ProjectState``. A schema change that forgets its Django
migration, or a Django migration whose fields drift from the tables, fails here. Django's own
``makemigrations --check`` (tests/contrib/test_django_example.py) holds models.py to the
migrations.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

import pytest
from helpers.storage import alembic_revisions

from dxf_celery.storage.tables import metadata

pytest.importorskip("django")

APP_LABEL = "dxf_celery"
#: Tables of dxf-celery that have no Django model (the scheduler's lease is nothing to administer).
NO_MODEL = {"dxf_lease"}


def _django_migrations() -> list[ModuleType]:
    """The migration modules in dependency order (each depends on the one before)."""
    import dxf_celery.contrib.django.migrations as pkg

    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
    modules = [importlib.import_module(f"{pkg.__name__}.{name}") for name in names]
    for before, module in zip([None, *names], modules, strict=False):
        expected = [] if before is None else [(APP_LABEL, before)]
        assert list(module.Migration.dependencies) == expected, module.__name__
    return modules


def _alembic_ops(module: ModuleType) -> list[tuple[str, str | None]]:
    from dxf_celery.contrib.django.operations import AlembicRevision

    return [(op.revision, op.down_revision) for op in module.Migration.operations if isinstance(op, AlembicRevision)]


def test_each_alembic_revision_has_one_django_migration_in_the_same_order() -> None:
    mirrored = [_alembic_ops(module) for module in _django_migrations()]
    assert all(len(ops) == 1 for ops in mirrored), "one AlembicRevision per Django migration"
    assert [ops[0] for ops in mirrored] == alembic_revisions()


def test_the_django_models_after_the_last_migration_have_the_tables_columns() -> None:
    from django.db.migrations.state import ProjectState

    state = ProjectState()
    for module in _django_migrations():
        for op in module.Migration.operations:
            op.state_forwards(APP_LABEL, state)
    models = {ms.options["db_table"]: ms for ms in state.models.values()}
    assert set(models) == {t.name for t in metadata.sorted_tables} - NO_MODEL
    for name, model in models.items():
        assert model.options.get("managed") is False, name
        table = metadata.tables[name]
        django_cols: dict[str, tuple[bool, Any]] = {
            (f.db_column or field): (bool(f.null), getattr(f, "max_length", None)) for field, f in model.fields.items()
        }
        sql_cols = {
            c.name: (bool(c.nullable) and not c.primary_key, getattr(c.type, "length", None)) for c in table.columns
        }
        assert django_cols == sql_cols, name
