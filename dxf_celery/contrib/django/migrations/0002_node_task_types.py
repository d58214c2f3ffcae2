"""Alembic revision 0002 (``dxf_node.task_types``), and the unmanaged Node model's new field.

AddField only records Django's view (the model is unmanaged: no SQL); AlembicRevision adds
the column, exactly as ``celery dxf migrate`` does.
"""

from __future__ import annotations

from django.db import migrations, models

from dxf_celery.contrib.django.operations import AlembicRevision


class Migration(migrations.Migration):  # type: ignore[misc]  # Django ships no type hints
    dependencies = [("dxf_celery", "0001_initial")]

    operations = [
        AlembicRevision(revision="0002", down_revision="0001"),
        migrations.AddField(model_name="node", name="task_types", field=models.TextField(null=True)),
    ]
