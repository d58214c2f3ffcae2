"""One worker node's DXF runtime, in the worker main process: the node Manager and the scheduler.

Two daemon threads do the SQL work, off Celery's event loop:

* the **node loop** calls ``Manager.handle_tasks()`` every ``dxf_task_check_interval`` (and
  at once on a ``dxf_wake`` control command). It is a local timer, not a beat tick: beat
  sends a message to *one* worker, delivering a tick to *every* node needs a fanout, which
  is lossy on Redis (pub/sub), and a Celery ``Timer`` dies with the consumer on a broker
  reconnect (celery#7844). Correctness comes from SQL either way; the heartbeat written
  here is what tells the cluster the node is alive.
* the **scheduler loop** runs ``scheduler.Manager.schedule_once()`` (under the database
  lease) when a ``dxf.schedule`` tick from beat (or a wake-up sent by ``submit_task``)
  reaches this node, and, while it holds the lease and ticks keep coming, at
  ``dxf_scheduler_interval`` on its own so that the pass rate does not depend on which node
  the broker hands each tick to (a non-holder passes the beat ticks it takes on to the
  holder). No tick for ``dxf_lease_ttl`` seconds: no pass, so without beat nothing new is
  planned, while running executors finish the subtasks they have.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from dxf_celery.context import Context
from dxf_celery.proto import NodeResource
from dxf_celery.scheduler.manager import MAX_FOLLOW_UP_PASSES
from dxf_celery.worker.launcher import CeleryLauncher
from dxf_celery.worker.names import STEP_DONE

if TYPE_CHECKING:
    from dxf_celery.worker.state import DXFState

logger = logging.getLogger(__name__)

#: Every runtime of this process by nodename (control commands and signals look them up).
runtimes: dict[str, NodeRuntime] = {}
_runtimes_lock = threading.Lock()

#: Reason of the pass that follows at once a pass that did work (``Manager.last_pass_worked``).
_MORE = "more"
#: Reasons of scheduler ticks that came from a user action: worth waking every node after.
_USER_REASONS = frozenset({"submit", "cancel", "pause", "resume", "resolve", "modify", "wake"})
# STEP_DONE (an executor's node ran the last live subtask of a step) is worth a pass now, but
# only while beat drives the scheduler: it never arms a pass, so without beat nothing is
# planned, as documented. It is worth waking every node after (the next step's subtasks).


def pool_kind(worker: Any) -> str:
    """``prefork``, ``threads``, ``solo``, ``gevent``, ``eventlet`` or the pool's module name."""
    cls = getattr(worker, "pool_cls", None)
    name = cls if isinstance(cls, str) else getattr(cls, "__module__", "") or ""
    name = name.rsplit(".", 1)[-1].rsplit(":", 1)[0].lower()
    return {"thread": "threads", "threads": "threads", "processes": "prefork"}.get(name, name or "prefork")


def find_runtime(nodename: str) -> NodeRuntime | None:
    with _runtimes_lock:
        return runtimes.get(nodename)


class NodeRuntime:
    """The DXF side of one Celery worker node."""

    def __init__(self, state: DXFState, worker: Any) -> None:
        from dxf_celery.scheduler.manager import Manager as SchedulerManager
        from dxf_celery.taskexecutor.manager import Manager

        settings = state.settings
        self.state = state
        self.settings = settings
        self.nodename: str = worker.hostname
        self.queue = settings.node_queue(self.nodename)
        self.pool_kind = pool_kind(worker)
        self._worker = worker
        self.task_manager = state.task_manager
        self.launcher = CeleryLauncher(
            state.app,
            nodename=self.nodename,
            queue=self.queue,
            launch_timeout=settings.launch_timeout,
            pool_kind=self.pool_kind,
            events_enabled=self._task_events_enabled,
            incarnation=state.incarnation or "",
        )
        self.ctx = Context.background()
        self.manager = Manager(
            self.ctx,
            self.task_manager,
            self.nodename,
            NodeResource(settings.node_slots, settings.node_memory),
            role=settings.node_role,
            intervals=state.intervals(),
            launcher=self.launcher,
        )
        self.scheduler = SchedulerManager(
            self.task_manager,
            owner_id=self.nodename,
            lease_ttl=settings.lease_ttl,
            intervals=state.scheduler_intervals(),
        )
        self._stopping = threading.Event()
        self._node_stop = threading.Event()
        self._node_wake = threading.Event()
        self._tick = threading.Event()
        self._tick_reason = "beat"
        self._tick_direct = False
        #: Wake-ups received on this node's own wake queue, by reason (``inspect dxf_node``).
        self.direct_wakeups: dict[str, int] = {}
        self._armed_until = 0.0
        #: Follow-up passes run in a row so far (see MAX_FOLLOW_UP_PASSES).
        self._more = 0
        self._holder = False
        self._last_pass = 0.0
        self._threads: list[threading.Thread] = []
        self._meta_ready = threading.Event()
        self._started = False
        self._stopped = False
        self._removed = False

    # ------------------------------------------------------------------ lifecycle

    def register(self) -> None:
        """Make the runtime findable (ticks, control commands, signals) before its threads run."""
        with _runtimes_lock:
            runtimes[self.nodename] = self

    def start(self) -> None:
        """Start the node and scheduler threads, once; called when the Celery consumer is up.

        Not earlier: the node row would announce a node that cannot yet receive the executors
        the scheduler assigns to it (a worker still connecting, or in mingle).
        """
        self.register()
        with _runtimes_lock:
            if self._started or self._stopping.is_set():
                return
            self._started = True
        for target, name in ((self._node_loop, "dxf-node"), (self._scheduler_loop, "dxf-scheduler")):
            thread = threading.Thread(target=target, name=f"{name}-{self.nodename}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "DXF node %s started: %d slots, role %r, pool %s, queue %s",
            self.nodename,
            self.settings.node_slots,
            self.settings.node_role,
            self.pool_kind,
            self.queue,
        )

    def begin_shutdown(self, cold: bool = False) -> None:
        """Shutdown starts: stop planning and starting executors; drain the running ones (warm) or cancel them.

        A warm shutdown drains: each executor finishes its running subtask within
        ``dxf_drain_grace`` and claims no other (Celery waits for the pool anyway). The node
        loop keeps running meanwhile (heartbeat, resent drains) until :meth:`remove_node`.
        """
        if cold:
            try:
                self.manager.cancel()
            except Exception:
                logger.exception("%s: cancelling executors failed", self.nodename)
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._tick.set()
        if not cold:
            logger.info(
                "DXF node %s: warm shutdown, draining executors %s (grace %.0fs)",
                self.nodename,
                self.manager.running_task_ids(),
                self.settings.effective_drain_grace,
            )
            try:
                self.manager.drain()
            except Exception:
                logger.exception("%s: draining executors failed", self.nodename)
        self._node_wake.set()

    def stop(self) -> None:
        """Bootstep stop (before the pool stops): stop planning, start the drain, free the lease.

        The node loop is not joined here: it heartbeats while the pool finishes the drained
        subtasks, and stops in :meth:`remove_node`.
        """
        if self._stopped:
            return
        self._stopped = True
        self.begin_shutdown()
        for thread in self._threads[1:]:
            thread.join(timeout=10)
        try:
            self.scheduler.release()
        except Exception:
            logger.exception("%s: releasing the scheduler lease failed", self.nodename)

    def remove_node(self) -> None:
        """After the pool stopped: delete the node row so the scheduler rebalances at once."""
        if self._removed:
            return
        self._removed = True
        self.stop()
        self._node_stop.set()
        self._node_wake.set()
        if self._threads:
            self._threads[0].join(timeout=10)  # no heartbeat may put the row back after the delete
        try:
            self.task_manager.delete_node(self.nodename)
            logger.info("DXF node %s removed from the cluster", self.nodename)
        except Exception as err:
            logger.warning("%s: could not remove the node row (it expires after dxf_node_ttl): %s", self.nodename, err)
        with _runtimes_lock:
            if runtimes.get(self.nodename) is self:
                del runtimes[self.nodename]

    # ------------------------------------------------------------------ wake-ups

    def wake(self) -> None:
        """Run a node check pass now (``dxf_wake`` control command, local scheduler passes)."""
        self._node_wake.set()

    def on_tick(self, reason: str = "beat", *, direct: bool = False) -> None:
        """A ``dxf.schedule`` message reached this node (called on the consumer's thread: O(1)).

        ``direct``: it came on this node's own wake queue, sent to it as the lease holder.
        """
        now = time.monotonic()
        if direct:
            self.direct_wakeups[reason] = self.direct_wakeups.get(reason, 0) + 1
        if reason == STEP_DONE:
            if now >= self._armed_until:
                return  # no tick for a lease TTL: beat is gone, and a step end does not replace it
        else:
            self._armed_until = now + self.settings.lease_ttl
        if direct:
            self._tick_direct = True
        self._tick_reason = reason
        self._tick.set()

    # ------------------------------------------------------------------ loops

    def _node_loop(self) -> None:
        interval = self.settings.task_check_interval
        while not self._stopping.is_set():
            try:
                self.manager.init_meta()
                self._meta_ready.set()
                break
            except Exception as err:
                logger.warning("%s: cannot register the node yet: %s", self.nodename, err)
                if self._stopping.wait(max(interval, 1.0)):
                    return
        while not self._node_stop.is_set():
            try:
                self.manager.handle_tasks()
            except Exception:
                logger.exception("%s: node check pass failed", self.nodename)
            if self._stopping.is_set() and not self.manager.running_task_ids():
                return  # shutting down and every executor has ended: nothing left to heartbeat for
            self._node_wake.wait(interval)
            self._node_wake.clear()

    def _scheduler_loop(self) -> None:
        interval = self.settings.scheduler_interval
        while not self._stopping.is_set():
            ticked = self._tick.wait(interval)
            if self._stopping.is_set():
                return
            self._tick.clear()
            reason = self._tick_reason if ticked else "timer"
            direct, self._tick_direct = self._tick_direct and ticked, False
            self._tick_reason = "beat"
            now = time.monotonic()
            if not ticked and not (self._holder and now < self._armed_until):
                continue
            if reason in ("beat", "timer") and now - self._last_pass < interval / 2:
                continue
            self._last_pass = now
            try:
                self._holder = self.scheduler.schedule_once()
            except Exception:
                logger.exception("%s: scheduler pass failed", self.nodename)
                continue
            if self._holder:
                self.wake()
                worked = self.scheduler.last_pass_worked
                if worked or reason in _USER_REASONS or reason == STEP_DONE:
                    self._broadcast_wake()  # new subtasks, or a state the nodes act on
                self._more = self._more + 1 if reason == _MORE else 0
                more = worked and self._more < MAX_FOLLOW_UP_PASSES and time.monotonic() < self._armed_until
                if more and not self._tick.is_set():
                    # A pass that did work is followed by another at once (while beat drives the
                    # scheduler): a task's next transition need not wait for the next tick.
                    self._tick_reason = _MORE
                    self._tick.set()
            elif direct and reason in _USER_REASONS:
                # Sent here as the holder, but the lease moved: let whoever holds it now see it.
                self.state.send_wakeup(reason, direct=False)
            elif reason == "beat" and not direct:
                # Beat's tick went to a node that does not hold the lease (the broker hands each
                # to any node, and a busy holder loses the race for them): pass it on, or the
                # holder, seeing no tick for a lease TTL, stops its passes until the lease
                # expires and moves (a stall of up to two TTLs, every few TTLs, under load).
                self.state.send_wakeup("beat", holder_only=True)

    def _broadcast_wake(self) -> None:
        try:
            self.state.app.control.broadcast("dxf_wake", reply=False)
        except Exception as err:
            logger.debug("%s: dxf_wake broadcast failed: %s", self.nodename, err)

    # ------------------------------------------------------------------ introspection

    def _task_events_enabled(self) -> bool:
        consumer = getattr(self._worker, "consumer", None)
        dispatcher = getattr(consumer, "event_dispatcher", None)
        if dispatcher is None or not getattr(dispatcher, "enabled", False):
            return False
        groups = getattr(dispatcher, "groups", None)
        return not groups or "task" in groups

    def describe(self) -> dict[str, Any]:
        """What ``celery inspect dxf_node`` shows."""
        return {
            "node": self.nodename,
            "queue": self.queue,
            "pool": self.pool_kind,
            "slots": self.settings.node_slots,
            "slots_used": self.manager.slot_manager.used_slots(),
            "executors": self.manager.running_task_ids(),
            "scheduler_lease": self._holder,
            "direct_wakeups": dict(self.direct_wakeups),
            "registered": self._meta_ready.is_set(),
        }
