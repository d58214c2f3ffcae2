"""LocalCluster: a whole DXF cluster in one process, for tests of task types (no Celery).

N node Managers and a scheduler Manager run as threads against a real database, with short
intervals, through the same code the Celery wiring drives. Stopping a node cancels its
Manager, so it stops heartbeating exactly like a crashed worker and the scheduler fails
its subtasks over once the node TTL passed.

    with LocalCluster("sqlite:///t.db", nodes=3, slots=8, check_interval=0.05) as cluster:
        task = cluster.submit_task("k1", "my_type", meta=b"{}", concurrency=2)
        done = cluster.wait_task(task.id, timeout=30)

Each cluster names its nodes and schedulers after a random token (``local-3f9a2c1d-node-1``)
and deletes its node rows when it stops, so clusters one after the other on one database
never plan onto each other's nodes. Clusters running *at once* on one database share the
scheduler lease and the node table, as workers of one DXF cluster do: whichever scheduler
holds the lease plans every task onto every live node. To keep them apart, create each with
``isolated=True`` and submit with ``target_scope=cluster.scope``: its nodes then carry that
cluster-unique scope as their role, so its tasks run only on its own nodes (every process
must register the task types, since any of the schedulers may plan any task).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

from dxf_celery import handle, scheduler, taskexecutor
from dxf_celery.client import TaskClient
from dxf_celery.context import Context
from dxf_celery.proto import NodeResource
from dxf_celery.storage import TaskManager, migrate

logger = logging.getLogger(__name__)

#: Memory given to each in-process node per slot (only used to size step resources).
MEM_PER_SLOT = 1 << 30


class LocalCluster(TaskClient):
    """In-process nodes plus a scheduler over one database; a context manager.

    The client API (``submit_task``, ``wait_task``, ...) is :class:`TaskClient`'s; writes wake
    nothing, the scheduler threads poll every ``check_interval``. ``isolated=True`` gives every
    node the cluster-unique role :attr:`scope` (see the module docstring).
    """

    def __init__(
        self,
        url: str,
        nodes: int = 3,
        slots: int = 8,
        check_interval: float = 0.05,
        *,
        node_ttl: float = 3.0,
        roles: Sequence[str] | None = None,
        isolated: bool = False,
        scheduler_intervals: scheduler.SchedulerIntervals | None = None,
        executor_intervals: taskexecutor.Intervals | None = None,
        lease_ttl: float = 5.0,
        migrate_db: bool = True,
    ) -> None:
        if nodes < 0 or slots < 1:
            raise ValueError("LocalCluster needs nodes >= 0 and slots >= 1")
        if roles is not None and len(roles) != nodes:
            raise ValueError(f"roles must name one role per node ({nodes}), got {len(roles)}")
        if isolated and roles is not None:
            raise ValueError("an isolated LocalCluster gives every node its own scope as role; do not pass roles")
        #: Unique per cluster: the prefix of its exec ids and scheduler owner ids.
        self.name = f"local-{uuid.uuid4().hex[:8]}"
        #: The role of this cluster's nodes: its name when isolated, else "" (submit with it as target_scope).
        self.scope = self.name if isolated else ""
        self.url = url
        self.slots = slots
        self.check_interval = check_interval
        self.lease_ttl = lease_ttl
        self._initial_roles = list(roles) if roles is not None else [self.scope] * nodes
        self._migrate = migrate_db
        self.scheduler_intervals = scheduler_intervals or replace(
            scheduler.SchedulerIntervals.fast(), schedule=check_interval, node_ttl=node_ttl
        )
        self.executor_intervals = executor_intervals or replace(
            taskexecutor.Intervals.fast(), task_check=check_interval
        )
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._nodes: dict[str, taskexecutor.Manager] = {}
        # Every node this cluster registered, stopped or not: their rows are deleted at stop.
        self._registered: list[str] = []
        self._schedulers: list[scheduler.Manager] = []
        self._tm: TaskManager | None = None
        self.ctx = Context.background()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Migrate the database, start the nodes and the scheduler; a failed start stops what began."""
        if self._migrate:
            migrate(self.url)
        self._tm = TaskManager(self.url)
        try:
            for role in self._initial_roles:
                self.add_node(role=role)
            self.add_scheduler(f"{self.name}-scheduler")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the schedulers, then every node (their executors are cancelled), then delete the node rows.

        Every step is attempted even when an earlier one failed (the first error is raised at
        the end), so no row of this cluster is left for a later cluster to plan onto.
        Calling it again does nothing more.
        """
        with self._lock:
            schedulers, self._schedulers = self._schedulers, []
            nodes, self._nodes = list(self._nodes.values()), {}
            registered, self._registered = self._registered, []
        errors: list[Exception] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as err:
                logger.warning("LocalCluster %s: %s failed: %s", self.name, what, err)
                errors.append(err)

        for sched in schedulers:
            attempt(f"stopping scheduler {sched.owner_id}", sched.stop)
        for node in nodes:
            attempt(f"cancelling node {node.exec_id}", node.cancel)
        for node in nodes:
            attempt(f"stopping node {node.exec_id}", functools.partial(node.stop, timeout=10.0))
        self.ctx.cancel()
        tm = self._tm
        if tm is not None:
            if registered:
                attempt(f"deleting nodes {', '.join(registered)}", lambda: tm.delete_dead_nodes(registered))
            tm.dispose()
        if errors:
            raise errors[0]

    @property
    def task_manager(self) -> TaskManager:
        if self._tm is None:
            raise RuntimeError("the LocalCluster is not started; use it as a context manager")
        return self._tm

    # ------------------------------------------------------------------ nodes and schedulers

    @property
    def node_ids(self) -> list[str]:
        """Exec ids of the running nodes."""
        with self._lock:
            return list(self._nodes)

    def node(self, exec_id: str) -> taskexecutor.Manager:
        with self._lock:
            return self._nodes[exec_id]

    def add_node(self, role: str | None = None) -> str:
        """Start one more node (it registers itself) and return its exec id.

        ``role`` defaults to the cluster's :attr:`scope` ("" unless the cluster is isolated).
        """
        exec_id = f"{self.name}-node-{next(self._ids)}"
        mgr = taskexecutor.Manager(
            self.ctx,
            self.task_manager,
            exec_id,
            NodeResource(total_cpu=self.slots, total_mem=self.slots * MEM_PER_SLOT),
            role=self.scope if role is None else role,
            intervals=self.executor_intervals,
        )
        with self._lock:
            self._registered.append(exec_id)
        mgr.init_meta()
        with self._lock:
            self._nodes[exec_id] = mgr
        mgr.start()
        return exec_id

    def stop_node(self, exec_id: str) -> None:
        """Cancel that node's Manager and executors: no more heartbeats, its rows stay as they are.

        The scheduler deletes the node once its TTL passed and moves its subtasks (and the
        cluster deletes it when it stops, if it is still there).
        """
        with self._lock:
            mgr = self._nodes.pop(exec_id)
        mgr.stop(timeout=10.0)

    def add_scheduler(self, owner_id: str | None = None) -> scheduler.Manager:
        """Start one more scheduler Manager thread (they compete for the lease)."""
        sched = scheduler.Manager(
            self.task_manager,
            owner_id=owner_id or f"{self.name}-scheduler-{next(self._ids)}",
            lease_ttl=self.lease_ttl,
            intervals=self.scheduler_intervals,
        )
        with self._lock:
            self._schedulers.append(sched)
        sched.start()
        return sched

    def stop_scheduler(self, sched: scheduler.Manager) -> None:
        """Stop one scheduler; it releases the lease so another takes over at once."""
        with self._lock:
            self._schedulers.remove(sched)
        sched.stop()

    @property
    def schedulers(self) -> list[scheduler.Manager]:
        with self._lock:
            return list(self._schedulers)

    # ------------------------------------------------------------------ client API hooks

    def _wait_poll_interval(self) -> float:
        return min(self.check_interval, handle.WAIT_POLL_INTERVAL)


@contextlib.contextmanager
def preserved_registrations() -> Iterator[None]:
    """Undo, on exit, every task-type registration (or clear) made inside the block.

    Registrations are process-global, so a test that registers a type, or clears them all,
    would otherwise change what later tests in the same process can run.
    """
    executors = taskexecutor.snapshot_task_executors()
    schedulers = scheduler.snapshot_scheduler_factories()
    try:
        yield
    finally:
        taskexecutor.restore_task_executors(executors)
        scheduler.restore_scheduler_factories(schedulers)


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, *, what: str = "condition", interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    For tests and benchmarks that wait for a state (a row, a node, a log line), never for a
    duration: past ``timeout`` seconds it raises :class:`TimeoutError` naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


__all__ = ["LocalCluster", "preserved_registrations", "wait_until"]
