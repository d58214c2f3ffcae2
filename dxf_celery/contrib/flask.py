"""Flask integration: ``DXFFlask(app)`` puts the DXF of the app's Celery app in ``app.extensions["dxf"]``.

Flask's own Celery pattern (``celery_init_app`` in the Flask docs) stores the Celery app in
``app.extensions["celery"]``; this extension reuses it, so workers (``celery -A
proj.make_celery worker``) and the web process share one configuration. DXF settings may come
from the Celery config (``app.config["CELERY"]["dxf_database_url"]``) or from Flask keys
``DXF_DATABASE_URL``, ``DXF_NODE_SLOTS``... (copied into the Celery config unless set there).

    app = Flask(__name__)
    celery_init_app(app)                  # the Flask docs' helper
    dxf = DXFFlask(app)

    @app.post("/imports")
    def start_import():
        task = dxf.submit_task(key, "csv_import", meta=...)
        return {"id": task.id}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dxf_celery.app import DXF
from dxf_celery.client import TaskClient
from dxf_celery.settings import PREFIX, DXFConfigError, DXFSettings

if TYPE_CHECKING:
    from celery import Celery
    from flask import Flask

    from dxf_celery.storage import TaskManager

EXTENSION_KEY = "dxf"
_SETTING_NAMES = tuple(f"{PREFIX}{name}" for name in DXFSettings.__dataclass_fields__)


class DXFFlask(TaskClient):
    """Flask extension; one object may serve several Flask apps (``init_app`` pattern).

    Its client API (``submit_task``, ``wait_task``, ...) is :class:`TaskClient`'s, run on the
    DXF of the current Flask app, so it behaves exactly as that DXF (wake-ups included).
    """

    def __init__(self, app: Flask | None = None, celery_app: Celery | None = None, **overrides: Any) -> None:
        self._overrides = overrides
        self._celery = celery_app
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app, celery_app)

    def init_app(self, app: Flask, celery_app: Celery | None = None) -> DXF:
        """Attach DXF to the Celery app of ``app`` and store it in ``app.extensions["dxf"]``."""
        celery = celery_app or self._celery or app.extensions.get("celery")
        if celery is None:
            raise DXFConfigError(
                "DXFFlask found no Celery app: pass celery_app=..., or store it in app.extensions['celery'] "
                "first (the Flask docs' celery_init_app pattern)"
            )
        for key in _SETTING_NAMES:
            flask_key = key.upper()
            if flask_key in app.config and celery.conf.get(key) is None:
                celery.conf[key] = app.config[flask_key]
        existing = getattr(celery, "dxf", None)
        dxf = existing if isinstance(existing, DXF) and not self._overrides else DXF(celery, **self._overrides)
        app.extensions[EXTENSION_KEY] = dxf
        if self._app is None:
            self._app = app
        return dxf

    @property
    def dxf(self) -> DXF:
        """The DXF of the current Flask app (or of the app given to the constructor)."""
        from flask import current_app, has_app_context

        app = current_app if has_app_context() else self._app
        if app is None:
            raise DXFConfigError("no Flask app: call DXFFlask(app) or use it inside an application context")
        dxf = app.extensions.get(EXTENSION_KEY)
        if not isinstance(dxf, DXF):
            raise DXFConfigError("this Flask app has no DXF: call DXFFlask.init_app(app)")
        return dxf

    # The client API (from TaskClient), bound to the current app's DXF.

    @property
    def task_manager(self) -> TaskManager:
        return self.dxf.task_manager

    def _wake(self, reason: str) -> None:
        self.dxf._wake(reason)

    def _wait_poll_interval(self) -> float:
        return self.dxf._wait_poll_interval()


def get_dxf() -> DXF:
    """The DXF of the current Flask app (inside a request or app context)."""
    from flask import current_app

    dxf = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(dxf, DXF):
        raise DXFConfigError("this Flask app has no DXF: call DXFFlask(app) where the app is created")
    return dxf
