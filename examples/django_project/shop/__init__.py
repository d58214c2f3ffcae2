"""The example project. Importing the Celery app here makes ``DXF(app)`` run whenever Django starts."""

from __future__ import annotations

from shop.celery import app as celery_app

__all__ = ["celery_app"]
