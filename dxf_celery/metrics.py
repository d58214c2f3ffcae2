"""Prometheus metrics: a collector reading SQL at scrape time, and the optional per-worker endpoint.

:class:`SQLCollector` answers every scrape from the database (tasks, subtasks, summaries,
nodes, leases), so whichever process serves it (the dashboard, any worker) reports the
same cluster-wide truth and nothing is lost when a worker restarts. Counters are SQL
totals over live and history rows; they drop when the subtask history GC deletes old rows,
which Prometheus' ``rate()`` treats as a counter reset.

:class:`WorkerMetrics` adds what only a worker process knows: how long its scheduler
passes take, whether it holds the lease, and how many SQL calls it had to retry. It is
served on ``dxf_metrics_port`` (off by default, loopback by default).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dxf_celery.storage import TaskManager
from dxf_celery.storage import dashboard_reads as reads

if TYPE_CHECKING:
    from dxf_celery.worker.node import NodeRuntime
    from dxf_celery.worker.state import DXFState

logger = logging.getLogger(__name__)

_FINISHED = ("succeed", "failed", "canceled")


class SQLCollector(Collector):
    """Cluster figures read from SQL on each scrape; ``dxf_sql_up`` is 0 when the read failed."""

    def __init__(self, tm: TaskManager) -> None:
        self.tm = tm

    def describe(self) -> list[Metric]:
        # Nothing at registration time: describing would read SQL while the registry is built.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("dxf_sql_up", "1 when the last scrape could read the DXF tables.")
        try:
            families = list(self._families())
        except Exception as err:
            logger.warning("metrics: reading the DXF tables failed: %s", err)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        tm = self.tm
        tasks = GaugeMetricFamily("dxf_tasks", "Tasks by state and type (live and history).", labels=["state", "type"])
        for (state, task_type), n in sorted(reads.task_counts(tm).items()):
            tasks.add_metric([state, task_type], n)
        yield tasks

        totals = reads.subtask_totals(tm)
        subtasks = GaugeMetricFamily(
            "dxf_subtasks", "Subtasks by state and type (live and history).", labels=["state", "type"]
        )
        finished = CounterMetricFamily(
            "dxf_subtasks_finished", "Subtasks that ended, by outcome and type (SQL totals).", labels=["state", "type"]
        )
        for (state, task_type), n in sorted(totals.by_state.items()):
            subtasks.add_metric([state, task_type], n)
            if state in _FINISHED:
                finished.add_metric([state, task_type], n)
        yield subtasks
        yield finished
        rows = CounterMetricFamily("dxf_subtask_rows", "Rows reported by subtask summaries.", labels=["type"])
        size = CounterMetricFamily("dxf_subtask_bytes", "Bytes reported by subtask summaries.", labels=["type"])
        for task_type, n in sorted(totals.rows_by_type.items()):
            rows.add_metric([task_type], n)
        for task_type, n in sorted(totals.bytes_by_type.items()):
            size.add_metric([task_type], n)
        yield rows
        yield size

        now = tm.server_time()
        used = tm.get_used_slots_on_nodes()
        executors = reads.executors_by_node(tm)
        slots = GaugeMetricFamily("dxf_node_slots", "Slots of each registered node.", labels=["node", "role"])
        slots_used = GaugeMetricFamily("dxf_node_slots_used", "Slots taken by active subtasks.", labels=["node"])
        execs = GaugeMetricFamily("dxf_node_executors", "Tasks with active subtasks on the node.", labels=["node"])
        age = GaugeMetricFamily(
            "dxf_node_heartbeat_age_seconds", "Seconds since the node's heartbeat.", labels=["node"]
        )
        for node in tm.get_all_nodes():
            slots.add_metric([node.id, node.role], node.cpu_count)
            slots_used.add_metric([node.id], used.get(node.id, 0))
            execs.add_metric([node.id], executors.get(node.id, 0))
            if node.heartbeat is not None:
                age.add_metric([node.id], max(0.0, (now - node.heartbeat).total_seconds()))
        yield from (slots, slots_used, execs, age)

        holder = GaugeMetricFamily(
            "dxf_lease_holder", "1 for the owner of each unexpired lease.", labels=["lease", "owner"]
        )
        for name, (owner, expires) in sorted(reads.lease_holders(tm).items()):
            if expires >= now:
                holder.add_metric([name, owner], 1)
        yield holder


def sql_registry(tm: TaskManager) -> CollectorRegistry:
    """A registry holding only the SQL collector (what the dashboard's ``/metrics`` serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SQLCollector(tm))
    return registry


class _RetryCounter(logging.Handler):
    """Counts the warnings :func:`dxf_celery.retry.run_with_retry` logs before each retry.

    Reading the log records keeps the retry loop free of any metrics dependency.
    """

    def __init__(self, counter: Counter) -> None:
        super().__init__(logging.WARNING)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        if "transient error" in record.msg:
            self.counter.inc()


class WorkerMetrics:
    """The metrics of one worker process: scheduler passes, lease, SQL retries, plus the SQL view."""

    def __init__(self, tm: TaskManager) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SQLCollector(tm))
        self.passes = Histogram(
            "dxf_scheduler_pass_seconds",
            "Duration of scheduler passes run by this worker.",
            ["node"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.lease = Gauge(
            "dxf_scheduler_lease_held",
            "1 while this worker's node holds the scheduler lease.",
            ["node"],
            registry=self.registry,
        )
        self.retries = Counter(
            "dxf_sql_retries", "SQL calls retried after a transient error in this process.", registry=self.registry
        )
        self._handler = _RetryCounter(self.retries)
        logging.getLogger("dxf_celery.retry").addHandler(self._handler)

    def timed_pass(self, node: str, schedule_once: Callable[[], bool]) -> Callable[[], bool]:
        """Wrap a scheduler's ``schedule_once`` so each pass is observed."""

        def run() -> bool:
            started = time.perf_counter()
            held = False
            try:
                held = schedule_once()
                return held
            finally:
                self.lease.labels(node).set(1 if held else 0)
                if held:
                    self.passes.labels(node).observe(time.perf_counter() - started)

        return run

    def close(self) -> None:
        logging.getLogger("dxf_celery.retry").removeHandler(self._handler)


_worker_lock = threading.Lock()
_worker_metrics: WorkerMetrics | None = None


def start_worker_metrics(state: DXFState, runtime: NodeRuntime) -> WorkerMetrics | None:
    """Serve the worker endpoint once per process (``dxf_metrics_port`` > 0) and observe ``runtime``."""
    global _worker_metrics
    settings = state.settings
    port = settings.metrics_port
    if port <= 0:
        return None
    from prometheus_client import start_http_server

    with _worker_lock:
        if _worker_metrics is None:
            metrics = WorkerMetrics(state.task_manager)
            try:
                start_http_server(port, addr=settings.metrics_host, registry=metrics.registry)
            except OSError as err:
                metrics.close()
                logger.warning(
                    "DXF metrics: cannot listen on %s:%d (%s); no worker metrics endpoint",
                    settings.metrics_host,
                    port,
                    err,
                )
                return None
            logger.info("DXF metrics on http://%s:%d/metrics", settings.metrics_host, port)
            _worker_metrics = metrics
        metrics = _worker_metrics
    scheduler: Any = runtime.scheduler
    scheduler.schedule_once = metrics.timed_pass(runtime.nodename, scheduler.schedule_once)
    return metrics


__all__ = ["SQLCollector", "WorkerMetrics", "sql_registry", "start_worker_metrics"]
