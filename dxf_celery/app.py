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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dxf_celery import handle
from dxf_celery.proto import EMPTY_META, NORMAL_PRIORITY, ExtraParams, Subtask, Task, TaskState
from dxf_celery.settings import DXFConfigError, DXFSettings
from dxf_celery.worker.state import DXFState, ensure_migrated, get_state

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.storage import TaskManager

__all__ = ["DXF", "DXFState", "ensure_migrated", "get_state"]

logger = logging.getLogger(__name__)


class DXF:
    """The Celery extension: ``dxf = DXF(app)``, then ``celery worker`` and ``celery beat`` as usual.

    ``overrides`` take precedence over ``app.conf`` (same names without the ``dxf_`` prefix).
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

    def wake(self) -> None:
        """Ask for a scheduler pass now instead of at the next beat tick."""
        self.state.send_wakeup("wake")

    # ------------------------------------------------------------------ handle API

    def submit_task(
        self,
        key: str,
        task_type: str,
        *,
        meta: bytes = EMPTY_META,
        concurrency: int = 1,
        priority: int = NORMAL_PRIORITY,
        target_scope: str = "",
        max_node_count: int = 0,
        extra_params: ExtraParams | None = None,
    ) -> Task:
        """Create a pending task; a scheduler pass plans it (a wake-up is sent at once)."""
        task = handle.submit_task(
            self.task_manager, key, task_type, meta=meta, concurrency=concurrency, priority=priority,
            target_scope=target_scope, max_node_count=max_node_count, extra_params=extra_params,
        )
        self.state.send_wakeup("submit")
        return task

    def get_task(self, key_or_id: str | int) -> Task:
        return handle.get_task(self.task_manager, key_or_id)

    def wait_task(
        self, task_id: int, timeout: float | None = None, raise_error: bool = True, poll_interval: float = 0.3
    ) -> Task:
        return handle.wait_task(self.task_manager, task_id, timeout=timeout, raise_error=raise_error,
                                poll_interval=poll_interval)

    def cancel_task(self, key_or_id: str | int) -> bool:
        done = handle.cancel_task(self.task_manager, key_or_id)
        if done:
            self.state.send_wakeup("cancel")
        return done

    def pause_task(self, key_or_id: str | int) -> bool:
        done = handle.pause_task(self.task_manager, key_or_id)
        if done:
            self.state.send_wakeup("pause")
        return done

    def resume_task(self, key_or_id: str | int) -> bool:
        done = handle.resume_task(self.task_manager, key_or_id)
        if done:
            self.state.send_wakeup("resume")
        return done

    def resolve_task(self, key_or_id: str | int) -> bool:
        done = handle.resolve_task(self.task_manager, key_or_id)
        if done:
            self.state.send_wakeup("resolve")
        return done

    def modify_task(
        self, task_id: int, *, concurrency: int | None = None, max_node_count: int | None = None,
        modifications: Sequence[Any] = (),
    ) -> None:
        handle.modify_task(self.task_manager, task_id, concurrency=concurrency,
                           max_node_count=max_node_count, modifications=modifications)
        self.state.send_wakeup("modify")

    def list_tasks(self, states: Sequence[TaskState | str] | None = None, limit: int = 100) -> list[Task]:
        return handle.list_tasks(self.task_manager, states=states, limit=limit)

    def get_subtasks(self, task_id: int, step: int | None = None) -> list[Subtask]:
        return handle.get_subtasks(self.task_manager, task_id, step=step)

    def get_task_progress(self, task_id: int) -> handle.TaskProgress:
        return handle.get_task_progress(self.task_manager, task_id)

    def __repr__(self) -> str:
        app = self._state.app.main if self._state is not None else None
        return f"<DXF app={app!r}>"
