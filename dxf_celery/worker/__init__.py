"""Celery wiring of DXF: node bootstep, executor task, cancel plumbing, scheduler ticks, events.

Imported by :class:`dxf_celery.DXF` when it attaches to an app; importing this package
alone registers nothing.
"""

from __future__ import annotations
