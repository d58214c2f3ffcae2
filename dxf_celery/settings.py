"""The ``dxf_*`` settings of a Celery app, read once into one typed, validated object.

Settings live in ``app.conf`` (so Django's ``CELERY_`` namespace gives ``CELERY_DXF_...``)
and are read through :meth:`DXFSettings.from_conf`, which checks every value and names the
setting to fix, instead of failing later deep inside a worker. docs/settings.md documents
each one with its default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dxf_celery.errors import DXFError
from dxf_celery.scheduler.param import SchedulerIntervals
from dxf_celery.taskexecutor.param import Intervals

PREFIX = "dxf_"
#: The core's own defaults: a setting left unset means exactly what the core would use.
_EXECUTOR = Intervals()
#: Seconds a shutdown keeps after the drain (and the cancel grace) for the last SQL writes.
DRAIN_MARGIN = 5.0
#: Share of ``dxf_node_ttl`` without a successful database read after which an executor fences itself.
FENCE_SHARE = 0.5
_SCHEDULER = SchedulerIntervals()


class DXFConfigError(DXFError, ValueError):
    """A ``dxf_*`` setting (or a Celery setting DXF depends on) has an unusable value."""


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class DXFSettings:
    """Every ``dxf_*`` setting with its default; field ``x`` is read from ``app.conf.dxf_x``."""

    #: SQLAlchemy URL of the DXF tables (SQLite file in the current directory by default).
    database_url: str = "sqlite:///dxf.db"
    #: Apply the bundled migrations on first use in a process (workers and clients).
    auto_migrate: bool = True
    #: Period of each node's check loop (start / preempt / pause / revert executors).
    task_check_interval: float = _EXECUTOR.task_check
    #: First pause of an executor that found no subtask; doubles up to the max.
    subtask_check_interval: float = _EXECUTOR.subtask_check
    #: Cap of the executor's polling backoff.
    max_subtask_check_interval: float = _EXECUTOR.max_subtask_check
    #: First pause of an executor that woke the scheduler for its step's end; doubles up to
    #: ``subtask_check_interval``.
    step_done_check_interval: float = _EXECUTOR.step_done_check
    #: How often a running executor re-reads its task's state to derive cancellation from SQL.
    watch_task_interval: float = _EXECUTOR.watch_task
    #: How often a node writes its heartbeat.
    heartbeat_interval: float = _EXECUTOR.heartbeat
    #: Period of the scheduler pass (beat entry ``dxf-scheduler``).
    scheduler_interval: float = _SCHEDULER.schedule
    #: Period of the subtask balancer inside the scheduler pass.
    balance_interval: float = _SCHEDULER.balance
    #: Retries in a row of a retryable planning error before the task reverts.
    planning_max_retries: int = _SCHEDULER.planning_max_retries
    #: Cap of the pause between planning attempts (starts at the scheduler interval, doubles).
    planning_retry_max_interval: float = _SCHEDULER.planning_retry_max_interval
    #: Seconds without heartbeat after which a node is suspect: no new work, its pending subtasks move.
    node_ttl: float = _SCHEDULER.node_ttl
    #: Further seconds of silence after which a suspect node is lost and its running subtasks move.
    node_lost_grace: float = _SCHEDULER.node_lost_grace
    #: Lifetime of the scheduler's database lease (a dead scheduler is replaced after it).
    lease_ttl: float = 5.0
    #: Days a finished task stays in the history tables (0 = forever); applied by the daily GC.
    history_retention: float = 0.0
    #: Slots of this node (sum of the concurrency of the tasks it runs at once).
    node_slots: int = field(default_factory=_cpu_count)
    #: Memory budget of this node in bytes, shared by slot (0 = unknown).
    node_memory: int = field(default_factory=_physical_memory)
    #: Role (scope) of this node; tasks with a ``target_scope`` only run on matching nodes.
    node_role: str = ""
    #: Each node consumes its own queue ``<prefix><nodename>`` for its executors.
    queue_prefix: str = "dxf.node."
    #: Queue of the scheduler ticks, consumed by every node's main process.
    scheduler_queue: str = "dxf.scheduler"
    #: Add the ``dxf-scheduler`` beat entry (turn off to drive the scheduler some other way).
    beat: bool = True
    #: Seconds a cancelled subtask gets to stop cooperatively before it is interrupted.
    cancel_grace: float = _EXECUTOR.cancel_grace
    #: An executor message not received by its node within this many seconds expires.
    launch_timeout: float = 60.0
    #: Scheduler wake-ups of one process, per reason, at most one per this many seconds (the
    #: first at once, the rest as one trailing message); 0 = one per write.
    wakeup_coalesce: float = 0.05
    #: Send ``task-progress`` events from executors when the worker sends task events.
    progress_events: bool = True
    #: Period of those progress events.
    progress_event_interval: float = 1.0
    #: Port of this worker's Prometheus endpoint (0 = none); see docs/dashboard.md.
    metrics_port: int = 0
    #: Address that endpoint listens on (loopback unless you expose it on purpose).
    metrics_host: str = "127.0.0.1"
    #: Attempts to reach the database when a worker starts (it waits for it like for the broker).
    database_connect_retries: int = 30
    #: Seconds between those attempts.
    database_connect_interval: float = 2.0
    #: Seconds a warm shutdown may take before the worker exits anyway (0 = wait as long as Celery
    #: does); a cold shutdown gets at most 10 s of it.
    shutdown_timeout: float = 60.0
    #: Seconds a draining executor lets its running subtask finish (warm shutdown, preemption)
    #: before it abandons it as ``running``; 0 = abandon at once (DXF). Kept inside
    #: ``dxf_shutdown_timeout`` (see :attr:`effective_drain_grace`).
    drain_grace: float = 30.0

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | Any, **overrides: Any) -> DXFSettings:
        """Read ``dxf_*`` keys (also ``DXF_*`` and ``CELERY_DXF_*``) from ``conf``; validate them."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            raw = _lookup(conf, f.name)
            if raw is not None:
                values[f.name] = raw
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DXFConfigError(f"unknown DXF settings {sorted(unknown)}; see docs/settings.md for the list")
        coerced = {name: _coerce(cls, name, value) for name, value in values.items()}
        settings = cls(**coerced)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`DXFConfigError` naming the first bad setting."""
        if not self.database_url:
            raise DXFConfigError("dxf_database_url is empty: set it to a SQLAlchemy URL, e.g. sqlite:///dxf.db")
        positive = (
            "task_check_interval",
            "subtask_check_interval",
            "max_subtask_check_interval",
            "step_done_check_interval",
            "watch_task_interval",
            "heartbeat_interval",
            "scheduler_interval",
            "balance_interval",
            "node_ttl",
            "lease_ttl",
            "cancel_grace",
            "launch_timeout",
            "progress_event_interval",
            "database_connect_interval",
            "planning_retry_max_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise DXFConfigError(f"{PREFIX}{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.wakeup_coalesce < 0:
            raise DXFConfigError(
                f"dxf_wakeup_coalesce must be >= 0 seconds (0 = no coalescing), got {self.wakeup_coalesce!r}"
            )
        if self.node_lost_grace < 0:
            raise DXFConfigError(f"dxf_node_lost_grace must be >= 0 seconds, got {self.node_lost_grace!r}")
        if self.history_retention < 0:
            raise DXFConfigError(
                f"dxf_history_retention must be >= 0 days (0 keeps history forever), got {self.history_retention!r}"
            )
        if self.max_subtask_check_interval < self.subtask_check_interval:
            raise DXFConfigError("dxf_max_subtask_check_interval must be >= dxf_subtask_check_interval")
        if self.planning_max_retries < 0:
            raise DXFConfigError(f"dxf_planning_max_retries must be >= 0, got {self.planning_max_retries}")
        if self.database_connect_retries < 1:
            raise DXFConfigError(f"dxf_database_connect_retries must be >= 1, got {self.database_connect_retries}")
        if self.drain_grace < 0:
            raise DXFConfigError(f"dxf_drain_grace must be >= 0 s (0 = no drain), got {self.drain_grace}")
        if self.shutdown_timeout < 0:
            raise DXFConfigError(f"dxf_shutdown_timeout must be >= 0 s (0 = no bound), got {self.shutdown_timeout}")
        if self.node_slots < 1:
            raise DXFConfigError(f"dxf_node_slots must be >= 1, got {self.node_slots}")
        if self.node_memory < 0:
            raise DXFConfigError(f"dxf_node_memory must be >= 0 bytes, got {self.node_memory}")
        if self.node_ttl <= self.heartbeat_interval:
            raise DXFConfigError(
                f"dxf_node_ttl ({self.node_ttl}) must exceed dxf_heartbeat_interval ({self.heartbeat_interval}), "
                "or live nodes are declared dead"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise DXFConfigError(f"dxf_metrics_port must be 0 (off) or a TCP port, got {self.metrics_port}")
        if not self.queue_prefix or not self.scheduler_queue:
            raise DXFConfigError("dxf_queue_prefix and dxf_scheduler_queue must be non-empty queue names")

    @property
    def effective_drain_grace(self) -> float:
        """``drain_grace``, cut so that a drain ends before the ``dxf_shutdown_timeout`` watchdog fires.

        The watchdog kills the worker ``shutdown_timeout`` seconds after the shutdown signal;
        a drain must leave it ``cancel_grace`` (to interrupt step code that ignores its
        cancellation) plus :data:`DRAIN_MARGIN` seconds (to record the outcome and exit).
        """
        if self.shutdown_timeout <= 0:
            return self.drain_grace
        room = self.shutdown_timeout - self.cancel_grace - DRAIN_MARGIN
        return max(0.0, min(self.drain_grace, room))

    def node_queue(self, nodename: str) -> str:
        """The queue that only node ``nodename`` consumes (its executors land there).

        The node name is escaped injectively to ``[A-Za-z0-9.-_]`` (``w1@host`` becomes
        ``w1_40host``): some transports (``filesystem://``) refuse other characters.
        """
        safe = "".join(ch if (ch.isascii() and (ch.isalnum() or ch in ".-")) else f"_{ord(ch):02x}" for ch in nodename)
        return f"{self.queue_prefix}{safe}"

    def node_wake_queue(self, nodename: str) -> str:
        """The queue of scheduler wake-ups meant for node ``nodename`` (sent to the lease holder).

        A sibling of :meth:`node_queue`, not that queue itself: executors there go through
        Celery's task consumer (prefetch, pool), a wake-up must reach the tick consumer of the
        main process at once.
        """
        return f"{self.node_queue(nodename)}.wake"


def _lookup(conf: Mapping[str, Any] | Any, name: str) -> Any:
    for key in (PREFIX + name, (PREFIX + name).upper(), "CELERY_" + (PREFIX + name).upper()):
        try:
            value = conf.get(key)
        except Exception:
            value = None
        if value is not None:
            return value
    return None


_DEFAULTS: dict[type[DXFSettings], DXFSettings] = {}


def _defaults(cls: type[DXFSettings]) -> DXFSettings:
    if cls not in _DEFAULTS:
        _DEFAULTS[cls] = cls()
    return _DEFAULTS[cls]


def _coerce(cls: type[DXFSettings], name: str, value: Any) -> Any:
    """Accept strings for numbers and booleans (environment-driven configs), reject the rest clearly."""
    sample = getattr(_defaults(cls), name)
    key = PREFIX + name
    try:
        if isinstance(sample, bool):
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(sample, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if isinstance(sample, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise DXFConfigError(f"{key} = {value!r} is not a valid {type(sample).__name__}") from None


PICKLE_CONTENT = frozenset({"pickle", "application/x-python-serialize"})


def check_celery_conf(conf: Any) -> None:
    """Refuse an app that accepts pickle: DXF's worker would execute what any broker client sends."""
    accept = conf.get("accept_content") or ()
    if isinstance(accept, str):
        accept = [accept]
    bad = sorted(PICKLE_CONTENT.intersection(str(a).lower() for a in accept))
    if bad:
        raise DXFConfigError(
            f"accept_content includes {bad}: dxf-celery accepts JSON only on the wire. "
            "Remove pickle from accept_content (the default ['json'] is fine)."
        )
