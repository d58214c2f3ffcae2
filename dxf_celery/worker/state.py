"""Per-app DXF state: settings, this process's TaskManager, the worker's identity, wake-ups.

It lives below both ``app.py`` (the ``DXF`` extension object) and the rest of ``worker/``
(bootsteps, tasks, node runtime), which all read it from ``app.dxf_state``; neither needs to
import the other for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from dxf_celery.settings import DXFConfigError, DXFSettings, check_celery_conf
from dxf_celery.worker.coalesce import WakeCoalescer
from dxf_celery.worker.names import SCHEDULE_TASK

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.scheduler.param import SchedulerIntervals
    from dxf_celery.storage import TaskManager
    from dxf_celery.taskexecutor.param import Intervals

logger = logging.getLogger(__name__)

#: How long a process trusts the scheduler lease holder it read (a wake-up sent to a node
#: that just lost the lease is forwarded to the shared queue by that node).
HOLDER_CACHE_SECONDS = 1.0

_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def ensure_migrated(url: str, attempts: int = 5) -> None:
    """Apply the bundled migrations once per process; retried because workers start together."""
    from dxf_celery.storage import migrate

    with _migrate_lock:
        if url in _migrated:
            return
        for attempt in range(attempts):
            try:
                migrate(url)
                break
            except Exception as err:
                if attempt == attempts - 1:
                    raise
                logger.info(
                    "migration attempt %d failed (%s); another process may be migrating, retrying", attempt + 1, err
                )
                time.sleep(0.2 * (attempt + 1))
        _migrated.add(url)


class DXFState:
    """Everything DXF keeps per Celery app: settings, the per-process TaskManager, the worker's identity."""

    def __init__(self, app: Celery, overrides: dict[str, Any]) -> None:
        self.app = app
        self.overrides = dict(overrides)
        self._settings: DXFSettings | None = None
        self._tm: TaskManager | None = None
        self._tm_pid = 0
        # TaskManagers inherited through fork: kept referenced so that garbage collection in a
        # pool child never closes the parent's database sockets.
        self._inherited: list[TaskManager] = []
        self._lock = threading.RLock()
        #: PID of the worker main process (set by the worker bootstep before anything runs).
        self.main_pid: int | None = None
        #: Id of this worker's life (set before the pool forks, so pool processes share it):
        #: executor messages launched by an earlier life of the same node are ignored.
        self.incarnation: str | None = None
        self.registered = False
        #: (monotonic time read, holder) of :meth:`scheduler_holder`.
        self._holder_cache: tuple[float, str | None] | None = None
        #: Spaces the wake-ups of this process (built on first use: it reads the settings).
        self._coalescer: WakeCoalescer | None = None

    @property
    def settings(self) -> DXFSettings:
        with self._lock:
            if self._settings is None:
                check_celery_conf(self.app.conf)
                self._settings = DXFSettings.from_conf(self.app.conf, **self.overrides)
            return self._settings

    @property
    def task_manager(self) -> TaskManager:
        """This process's TaskManager (a forked pool child builds its own)."""
        from dxf_celery.storage import TaskManager

        with self._lock:
            pid = os.getpid()
            if self._tm is None or self._tm_pid != pid:
                if self._tm is not None:
                    self._inherited.append(self._tm)
                settings = self.settings
                in_pool_child = self.main_pid is not None and self.main_pid != pid
                if settings.auto_migrate and not in_pool_child:
                    ensure_migrated(settings.database_url)
                self._tm = TaskManager(settings.database_url)
                self._tm_pid = pid
            return self._tm

    def intervals(self) -> Intervals:
        from dxf_celery.settings import FENCE_SHARE
        from dxf_celery.taskexecutor.param import Intervals

        s = self.settings
        return Intervals(
            task_check=s.task_check_interval,
            subtask_check=s.subtask_check_interval,
            max_subtask_check=s.max_subtask_check_interval,
            step_done_check=s.step_done_check_interval,
            watch_task=s.watch_task_interval,
            heartbeat=s.heartbeat_interval,
            cancel_grace=s.cancel_grace,
            drain_grace=s.effective_drain_grace,
            fence_after=s.node_ttl * FENCE_SHARE,
            stop_idempotent_after=s.node_ttl + s.node_lost_grace,
        )

    def scheduler_intervals(self) -> SchedulerIntervals:
        from dxf_celery.scheduler.param import SchedulerIntervals

        s = self.settings
        return SchedulerIntervals(
            schedule=s.scheduler_interval,
            balance=s.balance_interval,
            node_ttl=s.node_ttl,
            planning_max_retries=s.planning_max_retries,
            planning_retry_max_interval=s.planning_retry_max_interval,
            node_lost_grace=s.node_lost_grace,
            history_keep_seconds=s.history_retention * 86400.0 if s.history_retention > 0 else None,
        )

    def scheduler_holder(self, max_age: float = HOLDER_CACHE_SECONDS) -> str | None:
        """The live node holding the scheduler lease, read at most every ``max_age`` seconds.

        Only a registered node counts: a pass run in a pool (``dxf.schedule@<pid>``) holds the
        lease under a name that no tick consumer listens for. None when unknown or unreadable.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._holder_cache
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        from dxf_celery.scheduler.manager import LEASE_NAME

        holder: str | None = None
        try:
            tm = self.task_manager
            owner = tm.get_lease_owner(LEASE_NAME)
            if owner and any(node.id == owner for node in tm.get_all_nodes()):
                holder = owner
        except Exception as err:  # the wake-up falls back to the shared queue
            logger.debug("could not read the scheduler lease holder: %s", err)
        with self._lock:
            self._holder_cache = (now, holder)
        return holder

    def send_wakeup(self, reason: str = "wakeup", *, direct: bool = True, holder_only: bool = False) -> None:
        """Ask for a scheduler pass now (latency only: beat does it anyway).

        Sent to the lease holder's own wake queue when a holder is known (a wake-up taken by
        any other node would be refused, and the holder would wait for its timer); to the
        shared scheduler queue otherwise, or when ``direct`` is False. ``holder_only``: not
        sent at all without a holder (no lease: no scheduler running to hurry). Coalesced per
        ``(reason, direct, holder_only)`` over ``dxf_wakeup_coalesce`` seconds: the first at
        once, the rest of the window as one trailing message (``worker/coalesce.py``).
        """
        with self._lock:
            if self._coalescer is None:
                self._coalescer = WakeCoalescer(self._send_coalesced, self.settings.wakeup_coalesce)
            coalescer = self._coalescer
        coalescer.request((reason, direct, holder_only))

    def _send_coalesced(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        reason, direct, holder_only = key
        self.send_wakeup_now(str(reason), direct=bool(direct), holder_only=bool(holder_only))

    def send_wakeup_now(self, reason: str = "wakeup", *, direct: bool = True, holder_only: bool = False) -> None:
        """:meth:`send_wakeup` without coalescing: one message now."""
        s = self.settings
        holder = self.scheduler_holder() if direct else None
        if holder_only and not holder:
            return
        queue = s.node_wake_queue(holder) if holder else s.scheduler_queue
        try:
            self.app.send_task(
                SCHEDULE_TASK,
                kwargs={"reason": reason},
                queue=queue,
                routing_key=queue,
                expires=max(2 * s.scheduler_interval, 1.0),
                ignore_result=True,
            )
        except Exception as err:  # the broker may be down; beat's ticks still come later
            logger.warning("could not send a scheduler wake-up: %s", err)

    def dispose(self) -> None:
        with self._lock:
            if self._tm is not None and self._tm_pid == os.getpid():
                self._tm.dispose()
            self._tm = None

    def retarget(self, database_url: str) -> None:
        """Use ``database_url`` from now on in this process (a test runner's test database)."""
        with self._lock:
            if self.settings.database_url == database_url:
                return
            self.dispose()
            self._settings = dataclasses.replace(self.settings, database_url=database_url)
            self._holder_cache = None


def get_state(app: Celery) -> DXFState:
    """The DXF state of ``app``; :class:`DXFConfigError` when ``DXF(app)`` was never called."""
    state = getattr(app, "dxf_state", None)
    if not isinstance(state, DXFState):
        raise DXFConfigError(f"Celery app {app.main!r} has no DXF: call DXF(app) where the app is created")
    return state
