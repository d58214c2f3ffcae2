"""The live dashboard: ``celery -A proj dxf dashboard`` (see docs/dashboard.md).

It reads SQL only, so it works with no worker running and shows finished tasks from
history; its buttons (off by default) go through the client API.
"""

from __future__ import annotations
