"""Worker bootsteps: the node runtime (worker blueprint) and the scheduler tick consumer (consumer blueprint).

Order matters. The tick consumer shares the Celery consumer's broker connection, so it must
start after ``Mingle``: mingle's ``hello`` broadcast drains that connection until one second
passes without *any* message, and ticks arriving more often than that (beat, one wake-up per
submitted task) kept it draining for ever (the ``mingle: searching for neighbors`` hang).
Celery orders steps without a declared dependency by hash, so the dependency is explicit
(``Tasks``, which itself requires ``Mingle``, like Celery's own consumers). The node's threads
start only then too: a node registers once it can receive its executors.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from kombu import Consumer, Exchange, Queue
from kombu.message import Message

from dxf_celery.worker.node import NodeRuntime, find_runtime, pool_kind
from dxf_celery.worker.state import ensure_migrated, get_state

if TYPE_CHECKING:
    from dxf_celery.settings import DXFSettings

logger = logging.getLogger(__name__)


def direct_queue(name: str) -> Queue:
    """The queue as Celery's ``task_create_missing_queues`` creates it, so both ends agree."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


class DXFNodeStep(bootsteps.StartStopStep):
    """Holds the node's :class:`NodeRuntime`; started after the pool, stopped before it."""

    label = "DXF node"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        state = get_state(worker.app)
        state.main_pid = os.getpid()
        state.incarnation = uuid.uuid4().hex
        settings = state.settings  # a bad setting stops the worker here, with the setting's name
        _wait_for_database(settings, ensure_migrated)
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
                worker.hostname,
                kind,
                concurrency,
                slots,
                concurrency,
                slots,
                concurrency,
            )

    def start(self, worker: Any) -> None:
        # Registered now, started by the tick consumer once the Celery consumer is up.
        self.runtime = NodeRuntime(self._state, worker)
        self.runtime.register()

    def stop(self, worker: Any) -> None:
        if self.runtime is not None:
            self.runtime.stop()

    def shutdown(self, worker: Any) -> None:
        if self.runtime is not None:
            self.runtime.stop()


class DXFSchedulerTicks(bootsteps.ConsumerStep):
    """Consumes ``dxf.schedule`` ticks in the worker main process and hands them to the runtime.

    The handler only flips an event (the consumer loop must stay fast); the runtime's
    scheduler thread does the SQL. Whatever reaches the queue is acked: a message that cannot
    be a tick (not JSON, too big, not decodable) is logged in one line and dropped, never
    raised into the consumer loop, where it would stop the worker and be redelivered to the next.
    """

    label = "DXF scheduler ticks"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.c = c
        self._wake_queue = ""

    def get_consumers(self, channel: Any) -> list[Consumer]:
        settings = get_state(self.c.app).settings
        # The shared queue (beat, wake-ups when no holder is known) and this node's own wake
        # queue (wake-ups sent to it as the scheduler lease holder).
        self._wake_queue = settings.node_wake_queue(self.c.hostname)
        return [
            Consumer(
                channel,
                queues=[direct_queue(settings.scheduler_queue), direct_queue(self._wake_queue)],
                on_message=self.on_raw_message,
                on_decode_error=self.on_decode_error,
                accept=["json"],
            )
        ]

    def start(self, c: Any) -> None:
        super().start(c)
        runtime = find_runtime(c.hostname)
        if runtime is not None:
            runtime.start()  # once: later calls (after a broker reconnect) do nothing

    def stop(self, c: Any) -> None:
        self._close(c, True)

    def shutdown(self, c: Any) -> None:
        self._close(c, False)

    def _close(self, c: Any, cancel_consumers: bool = True) -> None:
        """Cancel the consumers and close their channel, whatever state the connection is in.

        After a connection loss Celery has already closed and dropped ``c.connection``
        (``None`` here), and the channels went with it. Called from signal handlers: no logging.
        """
        consumers, self.consumers = list(self.consumers or []), None
        connection = c.connection
        if connection is None:
            return
        errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
        channels = {consumer.channel for consumer in consumers if consumer.channel is not None}
        for consumer in consumers:
            if cancel_consumers:
                try:
                    consumer.cancel()
                except errors:
                    pass
        for channel in channels:
            try:
                channel.close()  # type: ignore[union-attr]
            except errors:
                pass

    def on_raw_message(self, message: Message) -> None:
        """Ack first (a tick is worth nothing twice), then decode defensively."""
        try:
            message.ack()
        except Exception:  # pragma: no cover - connection lost: the tick is lost, harmlessly
            return
        size = len(message.body or b"")
        if size > MAX_TICK_BYTES:
            _drop(message, f"{size} bytes, more than a tick ever takes ({MAX_TICK_BYTES})")
            return
        try:
            body = message.decode()
        except Exception as err:  # ContentDisallowed, DecodeError, anything a serializer raises
            _drop(message, type(err).__name__)
            return
        self.on_message(body, message)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """kombu's hook for a message it could not even turn into a :class:`Message`."""
        try:
            message.ack()
        except Exception:  # pragma: no cover - nothing to ack on a broken connection
            pass
        _drop(message, type(exc).__name__)

    def on_message(self, body: Any, message: Any) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        if _expired(headers.get("expires")):
            return
        reason = "beat"
        if isinstance(body, (list, tuple)) and len(body) >= 2 and isinstance(body[1], dict):
            reason = str(body[1].get("reason", "beat"))[:32]
        delivery = getattr(message, "delivery_info", None)
        routing_key = delivery.get("routing_key") if isinstance(delivery, dict) else None
        runtime = find_runtime(self.c.hostname)
        if runtime is not None:
            runtime.on_tick(reason, direct=bool(self._wake_queue) and routing_key == self._wake_queue)


#: A ``dxf.schedule`` message is a few hundred bytes; anything this big is not one.
MAX_TICK_BYTES = 64 * 1024


def _drop(message: Any, why: str) -> None:
    """One log line for a message that is not a tick: its metadata, never its body."""
    delivery = getattr(message, "delivery_info", None)
    routing_key = delivery.get("routing_key") if isinstance(delivery, dict) else None
    logger.warning(
        "DXF: dropped a message on queue %s that is not a scheduler tick (%s; content type %r)",
        routing_key or "?",
        why,
        getattr(message, "content_type", None),
    )


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


def _wait_for_database(settings: DXFSettings, ensure_migrated: Callable[[str], None]) -> None:
    """Wait (bounded, logged) for the database; exit with one line if it never comes."""
    from dxf_celery.worker.startup import DatabaseUnavailableError, wait_for_database

    def prepare() -> None:
        if settings.auto_migrate:
            # Before the pool forks, so that pool processes inherit "already migrated".
            ensure_migrated(settings.database_url)

    try:
        wait_for_database(
            settings.database_url,
            retries=settings.database_connect_retries,
            interval=settings.database_connect_interval,
            prepare=prepare,
        )
    except DatabaseUnavailableError as err:
        logger.critical("%s", err)
        raise SystemExit(1) from None
