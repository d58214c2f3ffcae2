"""Django integration: the ``DXFConfig`` app, transactional submit, migrations, admin, ``manage.py dxf``.

Add ``"dxf_celery.contrib.django.DXFConfig"`` to ``INSTALLED_APPS`` and call ``DXF(app)`` in
the project's ``celery.py``. Then:

- every installed app's ``dxf_tasks`` module is imported when Django starts (web process and
  workers): that is where a project registers its task types;
- :func:`database_url` turns a ``DATABASES`` entry into DXF's SQLAlchemy URL
  (``CELERY_DXF_DATABASE_URL = database_url("default", DATABASES)`` in settings.py);
- ``manage.py migrate`` creates and upgrades the DXF tables in ``DXF_DATABASE_ALIAS``;
- :func:`submit_task` joins the caller's ``transaction.atomic()``;
- the admin shows tasks, subtasks and nodes; ``manage.py dxf`` lists and steers tasks;
- under the test runner DXF follows the alias to its test database.

See docs/django.md.
"""

from __future__ import annotations

from dxf_celery.contrib.django.apps import DXFConfig
from dxf_celery.contrib.django.conf import (
    ALIAS_SETTING,
    TASK_TYPES_MODULE,
    autodiscover_task_types,
    configured_alias,
    database_url,
    get_dxf,
)
from dxf_celery.contrib.django.transactional import submit_task

__all__ = [
    "ALIAS_SETTING",
    "TASK_TYPES_MODULE",
    "DXFConfig",
    "autodiscover_task_types",
    "configured_alias",
    "database_url",
    "get_dxf",
    "submit_task",
]
