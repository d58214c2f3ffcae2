"""Scheduler-side slot reservation: which tasks may hold a scheduler that plans subtasks.

Each node has ``cpu_count`` slots (nodes are assumed alike when one reports 0). A *stripe*
is one slot on every node a task may use; a task needs ``concurrency`` stripes. A task
reserves by stripes when, on some node it may use, the stripes of the tasks ranked above it
leave room; else on one such node whose used + reserved slots leave room; otherwise it
reserves nothing and waits, and lower-ranked tasks may still fit. Only the nodes a task may
use count (its scope, or its type's eligible instances): a task no node can run, or whose
nodes are full of higher-ranked work, holds nothing that others could use.

Usage is read from the subtask table once per pass (an aggregate), then kept up to date in
memory as the pass plans steps, so this is an approximation; executors enforce slots exactly
(and preempt lower-ranked tasks there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from dxf_celery.proto import ManagedNode, TaskBase


@dataclass(frozen=True)
class Reservation:
    """The answer of :meth:`SlotManager.check`: where a task may reserve, or why it waits."""

    ok: bool
    #: "" for a reservation by stripes, else the one node it reserves on.
    exec_id: str = ""
    #: Why it cannot reserve (empty when ``ok``).
    reason: str = ""


class SlotManager:
    """Reservations of the running schedulers plus the last read of the slots in use."""

    def __init__(self, total_slots: int = 0) -> None:
        self._lock = threading.Lock()
        self._total_slots = total_slots
        self._nodes: list[str] = []
        self._capacity: dict[str, int] = {}
        self._used: dict[str, int] = {}
        #: Reserved (task, nodes it may use or None for every node), kept in rank order.
        self._stripes: list[tuple[TaskBase, frozenset[str] | None]] = []
        self._reserved: dict[str, int] = {}
        self._used_fresh = False

    @property
    def total_slots(self) -> int:
        return self._total_slots

    def update(self, nodes: Sequence[ManagedNode], used: dict[str, int] | None, *, fresh: bool = True) -> None:
        """Take the live nodes and the slots their active subtasks use.

        ``used`` None keeps the last read (as adjusted since) for reservation decisions and
        marks it stale, so the first plan of the pass reads it again; so does ``fresh``
        False (a read from before this pass's counts, e.g. the last balancing round's).
        """
        with self._lock:
            for node in nodes:
                if node.cpu_count > 0:
                    self._total_slots = node.cpu_count
                    break
            self._nodes = [n.id for n in nodes]
            self._capacity = {n.id: n.cpu_count if n.cpu_count > 0 else self._total_slots for n in nodes}
            last = self._used if used is None else used
            self._used = {n: last.get(n, 0) for n in self._nodes}
            self._used_fresh = used is not None and fresh

    def refresh_used(self, used: dict[str, int]) -> None:
        """Take fresh per-node usage for the same nodes (right before assigning a step's subtasks)."""
        with self._lock:
            self._used = {n: used.get(n, 0) for n in self._nodes}
            self._used_fresh = True

    def mark_stale(self) -> None:
        """The usage read may predate what a scheduler is about to act on; re-read it before planning."""
        with self._lock:
            self._used_fresh = False

    def used_for_planning(self, fetch: Callable[[], dict[str, int]]) -> None:
        """Make sure the usage is fresh for this pass, reading it (once) with ``fetch`` if not."""
        with self._lock:
            if self._used_fresh:
                return
        self.refresh_used(fetch())

    def account(self, nodes: Collection[str], slots: int) -> None:
        """A step was just planned on ``nodes``: count its slots there for the rest of the pass."""
        with self._lock:
            for n in nodes:
                if n in self._used:
                    self._used[n] += slots

    def used_slots(self) -> dict[str, int]:
        with self._lock:
            return dict(self._used)

    def capacity(self) -> int:
        """Slots of every live node together (bounds how many tasks can hold slots at once)."""
        with self._lock:
            return sum(self._capacity.values())

    def can_reserve(self, task: TaskBase, eligible: Sequence[str] | None = None) -> tuple[str, bool]:
        """Whether ``task`` may start; ``("", True)`` by stripes, ``(node, True)`` on one node."""
        r = self.check(task, eligible)
        return r.exec_id, r.ok

    def check(self, task: TaskBase, eligible: Sequence[str] | None = None) -> Reservation:
        """Where ``task`` may reserve among ``eligible`` (None: every live node), or why not."""
        with self._lock:
            if not self._nodes:
                return Reservation(False, reason="no worker node is registered")
            allowed = set(eligible) if eligible is not None else None
            nodes = [n for n in self._nodes if allowed is None or n in allowed]
            if not nodes:
                return Reservation(False, reason="no live node may run it (its target scope or eligible nodes)")
            need = task.concurrency
            for n in nodes:
                above = sum(t.concurrency for t, on in self._stripes if t.compare(task) < 0 and (on is None or n in on))
                if above + need <= self._capacity.get(n, self._total_slots):
                    return Reservation(True)
            for n in nodes:
                taken = self._used.get(n, 0) + self._reserved.get(n, 0)
                if taken + need <= self._capacity.get(n, self._total_slots):
                    return Reservation(True, exec_id=n)
            return Reservation(
                False,
                reason=f"its {len(nodes)} eligible node(s) have no {need} free slot(s): higher-ranked work holds them",
            )

    def reserve(self, task: TaskBase, exec_id: str, eligible: Sequence[str] | None = None) -> None:
        """Record a reservation; pair it with :meth:`unreserve` using the same task and ``exec_id``."""
        with self._lock:
            self._stripes.append((task, frozenset(eligible) if eligible is not None else None))
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
            fit = [n for n in nodes if self._used.get(n, 0) + required <= self._capacity.get(n, self._total_slots)]
        return fit or list(nodes)
