"""LocalCluster: a whole DXF cluster in one process, for tests of task types (no Celery).

N node Managers and a scheduler Manager run as threads against a real database, with short
intervals, through the same code the Celery wiring drives. Stopping a node cancels its
Manager, so it stops heartbeating exactly like a crashed worker and the scheduler fails
its subtasks over once the node TTL passed.

    with LocalCluster("sqlite:///t.db", nodes=3, slots=8, check_interval=0.05) as cluster:
        task = cluster.submit_task("k1", "my_type", meta=b"{}", concurrency=2)
        done = cluster.wait_task(task.id, timeout=30)
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from dxf_celery import handle, scheduler, taskexecutor
from dxf_celery.context import Context
from dxf_celery.proto import NodeResource, Subtask, Task
from dxf_celery.storage import TaskManager, migrate

#: Memory given to each in-process node per slot (only used to size step resources).
MEM_PER_SLOT = 1 << 30


class LocalCluster:
    """In-process nodes plus a scheduler over one database; a context manager."""

    def __init__(
        self,
        url: str,
        nodes: int = 3,
        slots: int = 8,
        check_interval: float = 0.05,
        *,
        node_ttl: float = 3.0,
        roles: Sequence[str] | None = None,
        scheduler_intervals: scheduler.SchedulerIntervals | None = None,
        executor_intervals: taskexecutor.Intervals | None = None,
        lease_ttl: float = 5.0,
        migrate_db: bool = True,
    ) -> None:
        if nodes < 0 or slots < 1:
            raise ValueError("LocalCluster needs nodes >= 0 and slots >= 1")
        if roles is not None and len(roles) != nodes:
            raise ValueError(f"roles must name one role per node ({nodes}), got {len(roles)}")
        self.url = url
        self.slots = slots
        self.check_interval = check_interval
        self.lease_ttl = lease_ttl
        self._initial_roles = list(roles) if roles is not None else [""] * nodes
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
        """Migrate the database, start the nodes and the scheduler."""
        if self._migrate:
            migrate(self.url)
        self._tm = TaskManager(self.url)
        for role in self._initial_roles:
            self.add_node(role=role)
        self.add_scheduler("local-scheduler")

    def stop(self) -> None:
        """Stop the schedulers, then every node (their executors are cancelled)."""
        with self._lock:
            schedulers, self._schedulers = self._schedulers, []
            nodes, self._nodes = list(self._nodes.values()), {}
        for sched in schedulers:
            sched.stop()
        for node in nodes:
            node.cancel()
        for node in nodes:
            node.stop(timeout=10.0)
        self.ctx.cancel()
        if self._tm is not None:
            self._tm.dispose()

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

    def add_node(self, role: str = "") -> str:
        """Start one more node (it registers itself) and return its exec id."""
        exec_id = f"local-node-{next(self._ids)}"
        mgr = taskexecutor.Manager(
            self.ctx,
            self.task_manager,
            exec_id,
            NodeResource(total_cpu=self.slots, total_mem=self.slots * MEM_PER_SLOT),
            role=role,
            intervals=self.executor_intervals,
        )
        mgr.init_meta()
        with self._lock:
            self._nodes[exec_id] = mgr
        mgr.start()
        return exec_id

    def stop_node(self, exec_id: str) -> None:
        """Cancel that node's Manager and executors: no more heartbeats, its rows stay as they are.

        The scheduler deletes the node once its TTL passed and moves its subtasks.
        """
        with self._lock:
            mgr = self._nodes.pop(exec_id)
        mgr.stop(timeout=10.0)

    def add_scheduler(self, owner_id: str | None = None) -> scheduler.Manager:
        """Start one more scheduler Manager thread (they compete for the lease)."""
        sched = scheduler.Manager(
            self.task_manager,
            owner_id=owner_id or f"local-scheduler-{next(self._ids)}",
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

    # ------------------------------------------------------------------ the handle API

    def submit_task(self, key: str, task_type: str, **kwargs: Any) -> Task:
        return handle.submit_task(self.task_manager, key, task_type, **kwargs)

    def wait_task(self, task_id: int, timeout: float | None = None, raise_error: bool = True) -> Task:
        poll = min(self.check_interval, handle.WAIT_POLL_INTERVAL)
        return handle.wait_task(self.task_manager, task_id, timeout, raise_error, poll_interval=poll)

    def get_task(self, key_or_id: str | int) -> Task:
        return handle.get_task(self.task_manager, key_or_id)

    def get_subtasks(self, task_id: int, step: int | None = None) -> list[Subtask]:
        return handle.get_subtasks(self.task_manager, task_id, step)

    def cancel_task(self, key_or_id: str | int) -> bool:
        return handle.cancel_task(self.task_manager, key_or_id)

    def pause_task(self, key_or_id: str | int) -> bool:
        return handle.pause_task(self.task_manager, key_or_id)

    def resume_task(self, key_or_id: str | int) -> bool:
        return handle.resume_task(self.task_manager, key_or_id)

    def resolve_task(self, key_or_id: str | int) -> bool:
        return handle.resolve_task(self.task_manager, key_or_id)

    def modify_task(self, task_id: int, **kwargs: Any) -> None:
        handle.modify_task(self.task_manager, task_id, **kwargs)

    def get_task_progress(self, task_id: int) -> handle.TaskProgress:
        return handle.get_task_progress(self.task_manager, task_id)


__all__ = ["LocalCluster"]
