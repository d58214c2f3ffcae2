"""Progress of a running executor as Celery ``task-progress`` events (for Flower and event consumers).

The authoritative progress is in SQL (subtask states and summaries); these events are a
best-effort mirror with a stable field set, sent from a small thread of the pool process
only when the worker sends task events (``-E`` / ``worker_send_task_events``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from dxf_celery.proto import SubtaskState

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)

PROGRESS_EVENT = "task-progress"
#: Fields of every ``task-progress`` event (besides Celery's own uuid/hostname/timestamp).
PROGRESS_FIELDS = (
    "dxf_task_id",
    "dxf_key",
    "dxf_type",
    "dxf_state",
    "dxf_step",
    "node",
    "subtasks_total",
    "subtasks_done",
    "subtasks_running",
    "current",
    "total",
)


def progress_fields(tm: TaskManager, task_id: int, node: str) -> dict[str, Any]:
    """The event payload for ``task_id`` as it is in SQL now (live or already in history)."""
    from dxf_celery.handle import get_task_progress

    progress = get_task_progress(tm, task_id)
    task = progress.task
    # A finished task is at STEP_DONE: report the last step that had subtasks.
    step = task.step if task.step in progress.steps or not progress.steps else max(progress.steps)
    counts = progress.steps[step].counts if step in progress.steps else {}
    total = sum(counts.values())
    done = counts.get(SubtaskState.SUCCEED, 0)
    return {
        "dxf_task_id": task.id,
        "dxf_key": task.key,
        "dxf_type": task.type,
        "dxf_state": task.state.value,
        "dxf_step": step,
        "node": node,
        "subtasks_total": total,
        "subtasks_done": done,
        "subtasks_running": counts.get(SubtaskState.RUNNING, 0),
        # ``current``/``total`` are the names progress-bar tools look for.
        "current": done,
        "total": total,
    }


class ProgressReporter:
    """Sends one ``task-progress`` event every ``interval`` seconds while the executor runs."""

    def __init__(
        self, app: Celery, tm: TaskManager, *, celery_id: str, hostname: str, task_id: int, interval: float
    ) -> None:
        self.app = app
        self.tm = tm
        self.celery_id = celery_id
        self.hostname = hostname
        self.task_id = task_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"dxf-progress-{task_id}", daemon=True)
        self._last: dict[str, Any] | None = None

    def start(self) -> ProgressReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._send()  # the final figures

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._send()

    def _send(self) -> None:
        try:
            fields = progress_fields(self.tm, self.task_id, self.hostname)
        except Exception as err:
            logger.debug("task %d: no progress event: %s", self.task_id, err)
            return
        if fields == self._last:
            return
        self._last = fields
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                dispatcher.send(PROGRESS_EVENT, uuid=self.celery_id, **fields)
        except Exception as err:
            logger.debug("task %d: sending a progress event failed: %s", self.task_id, err)
