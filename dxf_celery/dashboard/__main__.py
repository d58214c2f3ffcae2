"""``python -m dxf_celery.dashboard --database-url URL``: the dashboard without a Celery app."""

from __future__ import annotations

from dxf_celery.dashboard.command import main

main()
