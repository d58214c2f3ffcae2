"""Scheduler-side slot reservation: which tasks may hold a scheduler that plans subtasks.

Nodes are assumed alike, each with ``total_slots`` slots. A *stripe* is one slot on every node;
a task needs ``concurrency`` stripes. A task reserves by stripes when the stripes of the
tasks ranked above it leave room, else on one node whose used + reserved slots leave room;
otherwise it waits and lower-ranked tasks may still fit. Usage is read from the subtask
table once per pass, so this is an approximation; executors enforce slots exactly (and
preempt lower-ranked tasks there).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from dxf_celery.proto import ManagedNode, TaskBase


class SlotManager:
    """Reservations of the running schedulers plus the last read of the slots in use."""

    def __init__(self, total_slots: int = 0) -> None:
        self._lock = threading.Lock()
        self._total_slots = total_slots
        self._nodes: list[str] = []
        self._used: dict[str, int] = {}
        #: Reserved (task, slots) pairs, kept in rank order.
        self._stripes: list[tuple[TaskBase, int]] = []
        self._reserved: dict[str, int] = {}

    @property
    def total_slots(self) -> int:
        return self._total_slots

    def update(self, nodes: Sequence[ManagedNode], used: dict[str, int]) -> None:
        """Take the live nodes and the slots their active subtasks use."""
        with self._lock:
            for node in nodes:
                if node.cpu_count > 0:
                    self._total_slots = node.cpu_count
                    break
            self._nodes = [n.id for n in nodes]
            self._used = {n: used.get(n, 0) for n in self._nodes}

    def refresh_used(self, used: dict[str, int]) -> None:
        """Take fresh per-node usage for the same nodes (right before assigning a step's subtasks)."""
        with self._lock:
            self._used = {n: used.get(n, 0) for n in self._nodes}

    def used_slots(self) -> dict[str, int]:
        with self._lock:
            return dict(self._used)

    def can_reserve(self, task: TaskBase) -> tuple[str, bool]:
        """Whether ``task`` may start; ``("", True)`` by stripes, ``(node, True)`` on one node."""
        with self._lock:
            if not self._nodes:
                return "", False
            above = sum(slots for t, slots in self._stripes if t.compare(task) < 0)
            if above + task.concurrency <= self._total_slots:
                return "", True
            for node in self._nodes:
                if self._used.get(node, 0) + self._reserved.get(node, 0) + task.concurrency <= self._total_slots:
                    return node, True
            return "", False

    def reserve(self, task: TaskBase, exec_id: str) -> None:
        """Record a reservation; pair it with :meth:`unreserve` using the same arguments."""
        with self._lock:
            self._stripes.append((task, task.concurrency))
            self._stripes.sort(key=lambda item: item[0].rank_key())
            if exec_id:
                self._reserved[exec_id] = self._reserved.get(exec_id, 0) + task.concurrency

    def unreserve(self, task: TaskBase, exec_id: str) -> None:
        with self._lock:
            for i, (t, _) in enumerate(self._stripes):
                if t.id == task.id:
                    del self._stripes[i]
                    break
            if exec_id:
                left = self._reserved.get(exec_id, 0) - task.concurrency
                if left > 0:
                    self._reserved[exec_id] = left
                else:
                    self._reserved.pop(exec_id, None)

    def adjust_eligible_nodes(self, nodes: Sequence[str], required: int) -> list[str]:
        """The nodes with ``required`` free slots, or all of them when none has."""
        with self._lock:
            fit = [n for n in nodes if self._used.get(n, 0) + required <= self._total_slots]
        return fit or list(nodes)
