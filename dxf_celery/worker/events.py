"""Progress of a running executor for Flower and event consumers: ``task-progress`` events and ``PROGRESS`` meta.

The authoritative progress is in SQL (subtask states and summaries); what this module sends
is a best-effort mirror with a stable field set, from a small thread of the pool process:

* a ``task-progress`` event every ``dxf_progress_event_interval`` seconds when the worker
  sends task events (``-E`` / ``worker_send_task_events``); its ``result`` field carries the
  figures as text, because Flower shows only a fixed field set of a task (``result`` is one);
* the ``PROGRESS`` state with the same figures as its meta (``update_state``) when a result
  backend is configured, at most once every :data:`MIN_STORE_INTERVAL` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.utils.saferepr import saferepr

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
    "step_index",
    "step_count",
    "rows",
    "bytes",
    "node_subtasks",
    "result",
)
#: The Celery state of a running executor, in the result backend and in Flower.
PROGRESS_STATE = "PROGRESS"
#: Fewest seconds between two ``PROGRESS`` writes to the result backend.
MIN_STORE_INTERVAL = 1.0
#: The progress period is at least this many times as long as reading the figures took.
COST_SHARE = 20.0


def progress_fields(tm: TaskManager, task_id: int, node: str) -> dict[str, Any]:
    """The event payload for ``task_id`` as it is in SQL now (live or already in history).

    One aggregate of the counts per step, then the summaries of the reported step only: a
    task's other steps (and their rows) are not read.
    """
    from dxf_celery.handle import get_task, summed_summaries

    task = get_task(tm, task_id)
    by_step = tm.get_subtask_counts_by_step(task_id)
    # A finished task is at STEP_DONE: report the last step that had subtasks.
    step = task.step if task.step in by_step or not by_step else max(by_step)
    counts = dict(by_step.get(step, {}))
    total = sum(counts.values())
    done = counts.get(SubtaskState.SUCCEED, 0)
    planned = sorted(s for s in by_step if s >= 0)
    rows, size = summed_summaries(tm, task_id, step) if step in by_step else (0, 0)
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
        # Step k of n: n counts the steps planned so far (a task type decides its next step late).
        "step_index": planned.index(step) + 1 if step in planned else 0,
        "step_count": len(planned),
        "rows": rows,
        "bytes": size,
    }


def progress_meta(fields: dict[str, Any]) -> dict[str, Any]:
    """The ``PROGRESS`` meta (and ``result`` text) of an executor from its event fields.

    How far comes first: Flower's table cuts the result text short.
    """
    return {
        "subtasks_done": fields["subtasks_done"],
        "subtasks_total": fields["subtasks_total"],
        "subtasks_running": fields["subtasks_running"],
        "step": fields["dxf_step"],
        "step_index": fields["step_index"],
        "step_count": fields["step_count"],
        "rows": fields["rows"],
        "bytes": fields["bytes"],
        "node_subtasks": fields.get("node_subtasks", 0),
        "state": fields["dxf_state"],
        "task": fields["dxf_task_id"],
        "key": fields["dxf_key"],
        "node": fields["node"],
    }


def progress_period(interval: float, read_seconds: float) -> float:
    """Seconds until the next look: ``interval``, or :data:`COST_SHARE` times the last read if longer."""
    return max(interval, read_seconds * COST_SHARE)


class ProgressReporter:
    """Every ``interval`` seconds while the executor runs: a ``task-progress`` event and/or the ``PROGRESS`` state.

    ``send_events`` sends the events; ``store`` (given only when a result backend is
    configured) writes ``PROGRESS`` with the meta, at most every :data:`MIN_STORE_INTERVAL`
    seconds and only when the figures changed. ``node_subtasks`` counts the subtasks this
    executor finished so far.
    """

    def __init__(
        self,
        app: Celery,
        tm: TaskManager,
        *,
        celery_id: str,
        hostname: str,
        task_id: int,
        interval: float,
        send_events: bool = True,
        store: Callable[[str, dict[str, Any]], None] | None = None,
        node_subtasks: Callable[[], int] | None = None,
    ) -> None:
        self.app = app
        self.tm = tm
        self.celery_id = celery_id
        self.hostname = hostname
        self.task_id = task_id
        self.interval = interval
        self.send_events = send_events
        self.store = store
        self.node_subtasks = node_subtasks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"dxf-progress-{task_id}", daemon=True)
        self._last: dict[str, Any] | None = None
        self._last_stored: dict[str, Any] | None = None
        self._stored_at = float("-inf")

    def start(self) -> ProgressReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._send(final=True)  # the final figures

    def _loop(self) -> None:
        # The figures are read from SQL; on a task of very many subtasks that read costs, so the
        # period stretches to keep it under 1/COST_SHARE of this thread's time.
        wait = self.interval
        while not self._stop.wait(wait):
            started = time.monotonic()
            self._send()
            wait = progress_period(self.interval, time.monotonic() - started)

    def _send(self, final: bool = False) -> None:
        try:
            fields = progress_fields(self.tm, self.task_id, self.hostname)
        except Exception as err:
            logger.debug("task %d: no progress figures: %s", self.task_id, err)
            return
        if self.node_subtasks is not None:
            fields["node_subtasks"] = self.node_subtasks()
        meta = progress_meta(fields)
        fields["result"] = saferepr(meta)
        if self.send_events and fields != self._last:
            self._last = fields
            try:
                with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                    dispatcher.send(PROGRESS_EVENT, uuid=self.celery_id, **fields)
            except Exception as err:
                logger.debug("task %d: sending a progress event failed: %s", self.task_id, err)
        # The final figures are not stored: the executor's end state replaces PROGRESS at once.
        if self.store is None or final or meta == self._last_stored:
            return
        now = time.monotonic()
        if now - self._stored_at < MIN_STORE_INTERVAL:
            return
        self._stored_at = now
        self._last_stored = meta
        try:
            self.store(PROGRESS_STATE, meta)
        except Exception as err:
            logger.debug("task %d: storing the PROGRESS state failed: %s", self.task_id, err)
