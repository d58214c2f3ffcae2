"""Worker bootsteps: the node runtime (worker blueprint) and the scheduler tick consumer (consumer blueprint)."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime, timezone
from typing import Any

from celery import bootsteps
from kombu import Consumer, Exchange, Queue

from dxf_celery.worker.node import NodeRuntime, find_runtime, pool_kind
from dxf_celery.worker.state import ensure_migrated, get_state

logger = logging.getLogger(__name__)


def direct_queue(name: str) -> Queue:
    """The queue as Celery's ``task_create_missing_queues`` creates it, so both ends agree."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


class DXFNodeStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Holds the node's :class:`NodeRuntime`; started after the pool, stopped before it."""

    label = "DXF node"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        state = get_state(worker.app)
        state.main_pid = os.getpid()
        state.incarnation = uuid.uuid4().hex
        settings = state.settings  # a bad setting stops the worker here, with the setting's name
        if settings.auto_migrate:
            # Before the pool forks, so that pool processes inherit "already migrated".
            ensure_migrated(settings.database_url)
        queue = settings.node_queue(worker.hostname)
        worker.app.amqp.queues.select_add(direct_queue(queue))
        self._check_pool(worker, settings.node_slots)
        self.runtime: NodeRuntime | None = None
        self._state = state

    @staticmethod
    def _check_pool(worker: Any, slots: int) -> None:
        kind = pool_kind(worker)
        concurrency = 1 if kind == "solo" else int(getattr(worker, "concurrency", 0) or 0)
        if concurrency and concurrency < slots:
            logger.warning(
                "DXF: worker %s has a %s pool of %d but dxf_node_slots is %d: at most %d executors run at "
                "once and the others wait in the queue. Start the worker with --concurrency %d (or more, "
                "for your other tasks) or set dxf_node_slots=%d.",
                worker.hostname, kind, concurrency, slots, concurrency, slots, concurrency,
            )

    def start(self, worker: Any) -> None:
        self.runtime = NodeRuntime(self._state, worker)
        self.runtime.start()

    def stop(self, worker: Any) -> None:
        if self.runtime is not None:
            self.runtime.stop()

    def shutdown(self, worker: Any) -> None:
        if self.runtime is not None:
            self.runtime.stop()


class DXFSchedulerTicks(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Consumes ``dxf.schedule`` ticks in the worker main process and hands them to the runtime.

    The handler only flips an event (the consumer loop must stay fast); the runtime's
    scheduler thread does the SQL.
    """

    label = "DXF scheduler ticks"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.c = c

    def get_consumers(self, channel: Any) -> list[Consumer]:
        queue = get_state(self.c.app).settings.scheduler_queue
        return [Consumer(channel, queues=[direct_queue(queue)], callbacks=[self.on_message], accept=["json"])]

    def on_message(self, body: Any, message: Any) -> None:
        try:
            message.ack()
        except Exception:  # pragma: no cover - connection lost: the tick is lost, harmlessly
            return
        if _expired(message.headers.get("expires")):
            return
        reason = "beat"
        if isinstance(body, (list, tuple)) and len(body) >= 2 and isinstance(body[1], dict):
            reason = str(body[1].get("reason", "beat"))
        runtime = find_runtime(self.c.hostname)
        if runtime is not None:
            runtime.on_tick(reason)


def _expired(expires: Any) -> bool:
    if not expires:
        return False
    try:
        when = datetime.fromisoformat(str(expires))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when < datetime.now(timezone.utc)
