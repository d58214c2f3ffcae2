"""Storage: the SQL tables, the TaskManager that owns every statement, and migrations."""

from __future__ import annotations

from dxf_celery.storage.engine import StorageSchemaError, is_transient_error, safe_url
from dxf_celery.storage.migrate import migrate
from dxf_celery.storage.task_manager import TaskManager, utcnow

__all__ = ["StorageSchemaError", "TaskManager", "is_transient_error", "migrate", "safe_url", "utcnow"]
