"""``DXF``: the Celery extension object that turns a Celery app into a DXF cluster.

``DXF(app)`` (or ``DXF()`` then ``init_app(app)``) registers on the app: the ``dxf.execute``
and ``dxf.schedule`` tasks, the worker bootsteps (node Manager, scheduler ticks), the
remote-control commands and the ``dxf-scheduler`` beat entry. Per-app state lives on the app
(``app.dxf_state``), so attaching twice, or from two DXF objects, shares one state and
registers everything once. Settings are read lazily from ``app.conf`` on first use, so the
app may be configured after ``DXF(app)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dxf_celery.client import TaskClient
from dxf_celery.settings import DXFConfigError, DXFSettings
from dxf_celery.worker.state import DXFState, ensure_migrated, get_state

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.storage import TaskManager

__all__ = ["DXF", "DXFState", "ensure_migrated", "get_state"]

logger = logging.getLogger(__name__)


class DXF(TaskClient):
    """The Celery extension: ``dxf = DXF(app)``, then ``celery worker`` and ``celery beat`` as usual.

    ``overrides`` take precedence over ``app.conf`` (same names without the ``dxf_`` prefix).
    The client API (``submit_task``, ``wait_task``, ...) comes from :class:`TaskClient`; every
    accepted write is followed by a scheduler wake-up message.
    """

    def __init__(self, app: Celery | None = None, **overrides: Any) -> None:
        self._overrides = overrides
        self._state: DXFState | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Celery) -> DXF:
        """Attach to ``app``; attaching again (any DXF object) reuses the app's state."""
        state = getattr(app, "dxf_state", None)
        if not isinstance(state, DXFState):
            state = DXFState(app, self._overrides)
            app.dxf_state = state  # type: ignore[attr-defined]
        elif self._overrides and self._overrides != state.overrides:
            raise DXFConfigError("this Celery app already has DXF attached with other settings; attach it once")
        self._state = state
        if not state.registered:
            from dxf_celery.worker.wiring import install

            install(app, state)
            state.registered = True
        if getattr(app, "dxf", None) is None:
            app.dxf = self  # type: ignore[attr-defined]
        return self

    # ------------------------------------------------------------------ plumbing

    @property
    def state(self) -> DXFState:
        if self._state is None:
            raise DXFConfigError("DXF is not attached to a Celery app yet: call dxf.init_app(app)")
        return self._state

    @property
    def app(self) -> Celery:
        return self.state.app

    @property
    def settings(self) -> DXFSettings:
        return self.state.settings

    @property
    def task_manager(self) -> TaskManager:
        """The TaskManager of this process (created, and migrated if enabled, on first use)."""
        return self.state.task_manager

    def migrate(self) -> None:
        """Apply the bundled migrations to ``dxf_database_url`` now."""
        from dxf_celery.storage import migrate

        migrate(self.settings.database_url)

    # ------------------------------------------------------------------ client API hooks

    def _wake(self, reason: str) -> None:
        """After a write, ask a worker for a scheduler pass now (beat would do it at its next tick)."""
        self.state.send_wakeup(reason)

    def __repr__(self) -> str:
        app = self._state.app.main if self._state is not None else None
        return f"<DXF app={app!r}>"
