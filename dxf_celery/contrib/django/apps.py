"""The Django app of dxf-celery: ``INSTALLED_APPS += ["dxf_celery.contrib.django.DXFConfig"]``."""

from __future__ import annotations

from django.apps import AppConfig

from dxf_celery.contrib.django.conf import autodiscover_task_types


class DXFConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """Loads every app's ``dxf_tasks``, owns the DXF migrations, admin and ``manage.py dxf``."""

    name = "dxf_celery.contrib.django"
    label = "dxf_celery"
    verbose_name = "dxf-celery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from dxf_celery.contrib.django import testdb

        autodiscover_task_types()
        testdb.record_origins()
        connection_created.connect(testdb.on_connection_created, dispatch_uid="dxf_celery.follow_test_database")
