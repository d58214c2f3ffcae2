"""Unmanaged Django models over the DXF tables, for the admin and for read-only ORM queries.

The schema belongs to dxf-celery's migrations (see :mod:`.operations`): Django never creates
or alters these tables from the models. Write through the client API (``get_dxf()``), never
through these models, or the scheduler's state machine is bypassed.
"""

from __future__ import annotations

from django.db import models


class _TaskFields(models.Model):  # type: ignore[misc]  # Django ships no type hints
    id = models.BigAutoField(primary_key=True)
    task_key = models.CharField("key", max_length=256, unique=True)
    type = models.CharField(max_length=256)
    state = models.CharField(max_length=64)
    step = models.IntegerField()
    priority = models.IntegerField()
    concurrency = models.IntegerField()
    target_scope = models.CharField(max_length=256, blank=True)
    max_node_count = models.IntegerField()
    extra_params = models.TextField(null=True)
    meta = models.BinaryField(null=True)
    error = models.TextField(null=True)
    modify_params = models.TextField(null=True)
    create_time = models.DateTimeField()
    start_time = models.DateTimeField(null=True)
    state_update_time = models.DateTimeField(null=True)
    end_time = models.DateTimeField(null=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.task_key} ({self.state})"


class Task(_TaskFields):
    """A live task (``dxf_task``): pending, running, paused, reverting, awaiting resolution..."""

    class Meta:
        managed = False
        db_table = "dxf_task"
        ordering = ("-id",)
        verbose_name = "task"


class TaskHistory(_TaskFields):
    """A finished task (``dxf_task_history``): succeed, failed or reverted."""

    class Meta:
        managed = False
        db_table = "dxf_task_history"
        ordering = ("-id",)
        verbose_name = "finished task"


class _SubtaskFields(models.Model):  # type: ignore[misc]
    id = models.BigAutoField(primary_key=True)
    task_id = models.BigIntegerField()
    step = models.IntegerField()
    type = models.CharField(max_length=256)
    exec_id = models.CharField("node", max_length=261)
    state = models.CharField(max_length=64)
    concurrency = models.IntegerField()
    ordinal = models.IntegerField()
    meta = models.BinaryField()
    summary = models.TextField()
    checkpoint = models.TextField()
    error = models.TextField(null=True)
    create_time = models.DateTimeField()
    start_time = models.DateTimeField(null=True)
    state_update_time = models.DateTimeField(null=True)
    end_time = models.DateTimeField(null=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"task {self.task_id} step {self.step} #{self.ordinal} ({self.state})"


class Subtask(_SubtaskFields):
    """A subtask of a live task (``dxf_subtask``)."""

    class Meta:
        managed = False
        db_table = "dxf_subtask"
        ordering = ("task_id", "step", "ordinal")
        verbose_name = "subtask"


class SubtaskHistory(_SubtaskFields):
    """A subtask of a finished task (``dxf_subtask_history``)."""

    class Meta:
        managed = False
        db_table = "dxf_subtask_history"
        ordering = ("task_id", "step", "ordinal")
        verbose_name = "finished subtask"
        verbose_name_plural = "finished subtasks"


class Node(models.Model):  # type: ignore[misc]
    """A worker node (``dxf_node``) and its last heartbeat."""

    host = models.CharField(max_length=261, primary_key=True)
    role = models.CharField(max_length=64, blank=True)
    cpu_count = models.IntegerField("slots")
    heartbeat = models.DateTimeField(null=True)
    #: JSON list of the task types the node's process registered; NULL = unknown (an older node).
    task_types = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "dxf_node"
        ordering = ("host",)
        verbose_name = "node"

    def __str__(self) -> str:
        return str(self.host)
