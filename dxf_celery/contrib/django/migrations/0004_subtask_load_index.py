"""Alembic revision 0004 (the scheduler's subtask load index) for Django's ``migrate``.

An index only: the unmanaged models do not change, so the migration is the
AlembicRevision operation alone.
"""

from __future__ import annotations

from django.db import migrations

from dxf_celery.contrib.django.operations import AlembicRevision


class Migration(migrations.Migration):  # type: ignore[misc]  # Django ships no type hints
    dependencies: list[tuple[str, str]] = [("dxf_celery", "0003_subtask_claim_index")]

    operations = [AlembicRevision(revision="0004", down_revision="0003")]
