"""The DXF tables of Alembic revision 0001, and unmanaged models over them for the admin.

The CreateModel operations only record Django's view of the tables (``managed = False``: no
SQL); AlembicRevision creates them, exactly as ``celery dxf migrate`` does. A later Alembic
revision gets its own Django migration here with ``AlembicRevision("0002", "0001")``.
"""

from __future__ import annotations

from django.db import migrations, models

from dxf_celery.contrib.django.operations import AlembicRevision


class Migration(migrations.Migration):  # type: ignore[misc]  # Django ships no type hints
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        AlembicRevision(revision="0001", down_revision=None),
        migrations.CreateModel(
            name="Node",
            fields=[
                ("host", models.CharField(max_length=261, primary_key=True, serialize=False)),
                ("role", models.CharField(blank=True, max_length=64)),
                ("cpu_count", models.IntegerField(verbose_name="slots")),
                ("heartbeat", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "node",
                "db_table": "dxf_node",
                "ordering": ("host",),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Subtask",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("task_id", models.BigIntegerField()),
                ("step", models.IntegerField()),
                ("type", models.CharField(max_length=256)),
                ("exec_id", models.CharField(max_length=261, verbose_name="node")),
                ("state", models.CharField(max_length=64)),
                ("concurrency", models.IntegerField()),
                ("ordinal", models.IntegerField()),
                ("meta", models.BinaryField()),
                ("summary", models.TextField()),
                ("checkpoint", models.TextField()),
                ("error", models.TextField(null=True)),
                ("create_time", models.DateTimeField()),
                ("start_time", models.DateTimeField(null=True)),
                ("state_update_time", models.DateTimeField(null=True)),
                ("end_time", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "subtask",
                "db_table": "dxf_subtask",
                "ordering": ("task_id", "step", "ordinal"),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="SubtaskHistory",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("task_id", models.BigIntegerField()),
                ("step", models.IntegerField()),
                ("type", models.CharField(max_length=256)),
                ("exec_id", models.CharField(max_length=261, verbose_name="node")),
                ("state", models.CharField(max_length=64)),
                ("concurrency", models.IntegerField()),
                ("ordinal", models.IntegerField()),
                ("meta", models.BinaryField()),
                ("summary", models.TextField()),
                ("checkpoint", models.TextField()),
                ("error", models.TextField(null=True)),
                ("create_time", models.DateTimeField()),
                ("start_time", models.DateTimeField(null=True)),
                ("state_update_time", models.DateTimeField(null=True)),
                ("end_time", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "finished subtask",
                "verbose_name_plural": "finished subtasks",
                "db_table": "dxf_subtask_history",
                "ordering": ("task_id", "step", "ordinal"),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Task",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("task_key", models.CharField(max_length=256, unique=True, verbose_name="key")),
                ("type", models.CharField(max_length=256)),
                ("state", models.CharField(max_length=64)),
                ("step", models.IntegerField()),
                ("priority", models.IntegerField()),
                ("concurrency", models.IntegerField()),
                ("target_scope", models.CharField(blank=True, max_length=256)),
                ("max_node_count", models.IntegerField()),
                ("extra_params", models.TextField(null=True)),
                ("meta", models.BinaryField(null=True)),
                ("error", models.TextField(null=True)),
                ("modify_params", models.TextField(null=True)),
                ("create_time", models.DateTimeField()),
                ("start_time", models.DateTimeField(null=True)),
                ("state_update_time", models.DateTimeField(null=True)),
                ("end_time", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "task",
                "db_table": "dxf_task",
                "ordering": ("-id",),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="TaskHistory",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("task_key", models.CharField(max_length=256, unique=True, verbose_name="key")),
                ("type", models.CharField(max_length=256)),
                ("state", models.CharField(max_length=64)),
                ("step", models.IntegerField()),
                ("priority", models.IntegerField()),
                ("concurrency", models.IntegerField()),
                ("target_scope", models.CharField(blank=True, max_length=256)),
                ("max_node_count", models.IntegerField()),
                ("extra_params", models.TextField(null=True)),
                ("meta", models.BinaryField(null=True)),
                ("error", models.TextField(null=True)),
                ("modify_params", models.TextField(null=True)),
                ("create_time", models.DateTimeField()),
                ("start_time", models.DateTimeField(null=True)),
                ("state_update_time", models.DateTimeField(null=True)),
                ("end_time", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "finished task",
                "db_table": "dxf_task_history",
                "ordering": ("-id",),
                "managed": False,
            },
        ),
    ]
