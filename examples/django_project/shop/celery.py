"""The project's Celery app, with DXF attached: ``celery -A shop worker -B``."""

from __future__ import annotations

import os

from celery import Celery

from dxf_celery import DXF

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Without this line get_dxf() fails: DXF registers its tasks, bootsteps and beat entry here.
dxf = DXF(app)
