"""The node's slot budget, with preemption of lower-ranked executors (DXF's ``slotManager``)."""

from __future__ import annotations

import threading

from dxf_celery.errors import DXFError
from dxf_celery.proto import TaskBase


class InvalidSlotCountError(DXFError, ValueError):
    """A node was given no slots."""


class SlotManager:
    """Tracks the slots held by each running executor of a node; thread-safe.

    A task holds ``concurrency`` slots. Tasks are kept in rank order so that a task of higher
    priority can name the lowest-ranked executors it would need to preempt.
    """

    def __init__(self, total_slots: int) -> None:
        if total_slots < 1:
            raise InvalidSlotCountError(
                f"slot capacity must be >= 1 (the node's slots, dxf_node_slots), got {total_slots}"
            )
        self._total = total_slots
        self._available = total_slots
        self._tasks: dict[int, TaskBase] = {}
        self._lock = threading.Lock()

    @property
    def total_slots(self) -> int:
        """The node's slots (``NodeResource.total_cpu``)."""
        return self._total

    def available_slots(self) -> int:
        with self._lock:
            return self._available

    def used_slots(self) -> int:
        with self._lock:
            return self._total - self._available

    def slots_of(self, task_id: int) -> int | None:
        """Slots held by ``task_id``, or None when it holds none."""
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.concurrency

    def task_ids(self) -> list[int]:
        with self._lock:
            return list(self._tasks)

    def _can_alloc_locked(self, task: TaskBase) -> tuple[bool, list[TaskBase]]:
        if self._available >= task.concurrency:
            return True, []
        victims: list[TaskBase] = []
        freed = 0
        # Walk from the lowest rank upwards. Only a strictly higher priority preempts: among
        # equal priorities the rank tie-break (create_time, id) decides who starts first, never
        # who is stopped, so a burst of equal-priority submits cannot preempt each other.
        for held in sorted(self._tasks.values(), key=TaskBase.rank_key, reverse=True):
            if held.priority <= task.priority:
                break
            victims.append(held)
            freed += held.concurrency
            if self._available + freed >= task.concurrency:
                return True, victims
        return False, []

    def can_alloc(self, task: TaskBase) -> tuple[bool, list[TaskBase]]:
        """Whether ``task`` fits, and which lower-ranked executors must stop first to make it fit."""
        with self._lock:
            return self._can_alloc_locked(task)

    def alloc(self, task: TaskBase) -> bool:
        """Take the slots of ``task`` if they are free now (no preemption needed)."""
        with self._lock:
            if task.id in self._tasks:
                return False
            ok, victims = self._can_alloc_locked(task)
            if not ok or victims:
                return False
            self._tasks[task.id] = task.base()
            self._available -= task.concurrency
            return True

    def free(self, task_id: int) -> None:
        """Give back the slots of ``task_id``; unknown ids are ignored."""
        with self._lock:
            task = self._tasks.pop(task_id, None)
            if task is not None:
                self._available += task.concurrency

    def exchange(self, task: TaskBase) -> bool:
        """Change the slots held by ``task.id`` to ``task.concurrency`` (a live concurrency change).

        Fails when the task holds no slots or growing would exceed the node's slots.
        """
        with self._lock:
            held = self._tasks.get(task.id)
            if held is None:
                return False
            delta = task.concurrency - held.concurrency
            if delta > 0 and self._available < delta:
                return False
            self._tasks[task.id] = task.base()
            self._available -= delta
            return True
