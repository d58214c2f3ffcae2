"""The Django migrations mirror the Alembic revisions, one for one, column for column.

Fast and without a database or configured Django settings (Django may be configured once per
process, by tests/contrib/test_contrib.py): the migration modules are imported and their
operations replayed into a Django ``ProjectState``. A schema change that forgets its Django
migration, or a Django migration whose fields drift from the tables, fails here. models.py is
checked in a subprocess (it needs configured settings): Django's ``makemigrations --check``
does not see field changes of unmanaged models, so it cannot hold models.py to the tables.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
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


def _sql_columns() -> dict[str, dict[str, list[Any]]]:
    """Each table with a Django model: column -> [nullable, string length]."""
    return {
        t.name: {c.name: [bool(c.nullable) and not c.primary_key, getattr(c.type, "length", None)] for c in t.columns}
        for t in metadata.sorted_tables
        if t.name not in NO_MODEL
    }


def _django_columns(fields: Iterable[tuple[str, Any]]) -> dict[str, list[Any]]:
    return {(f.db_column or name): [bool(f.null), getattr(f, "max_length", None)] for name, f in fields}


def test_the_django_models_after_the_last_migration_have_the_tables_columns() -> None:
    from django.db.migrations.state import ProjectState

    state = ProjectState()
    for module in _django_migrations():
        for op in module.Migration.operations:
            op.state_forwards(APP_LABEL, state)
    assert all(ms.options.get("managed") is False for ms in state.models.values())
    django = {ms.options["db_table"]: _django_columns(ms.fields.items()) for ms in state.models.values()}
    assert django == _sql_columns()


MODELS_SCRIPT = textwrap.dedent("""
    import json
    import django
    from django.conf import settings
    settings.configure(
        INSTALLED_APPS=["dxf_celery.contrib.django.DXFConfig"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    django.setup()
    from django.apps import apps
    out = {}
    for model in apps.get_app_config("dxf_celery").get_models():
        assert model._meta.managed is False, model
        out[model._meta.db_table] = {
            f.column: [bool(f.null), getattr(f, "max_length", None)] for f in model._meta.concrete_fields
        }
    print(json.dumps(out))
""")


def test_the_models_module_has_the_tables_columns() -> None:
    proc = subprocess.run([sys.executable, "-c", MODELS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == _sql_columns()
