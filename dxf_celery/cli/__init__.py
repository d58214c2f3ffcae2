"""``celery -A proj dxf ...``: manage DXF tasks from the shell.

Installed as a ``celery.commands`` entry point (``dxf = dxf_celery.cli:dxf``), so the group
sees the project's Celery app (``-A proj``) and reads the dxf settings from it. Three rooms:
:mod:`~dxf_celery.cli.runtime` finds the app's DXF and turns user errors into one line,
:mod:`~dxf_celery.cli.commands` holds the click commands, :mod:`~dxf_celery.cli.render`
turns tasks, subtasks and nodes into tables and JSON.

Exit codes: 0 ok; 1 the operation failed or the task did not succeed; 2 usage error;
3 ``wait`` timed out; 4 ``wait`` found the task paused.
"""

from __future__ import annotations

from dxf_celery.cli import dashboard as _dashboard  # noqa: F401  (registers `dxf dashboard`)
from dxf_celery.cli.commands import dxf

__all__ = ["dxf"]
