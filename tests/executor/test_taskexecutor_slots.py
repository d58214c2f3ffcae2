"""SlotManager and the task-type registry (pure units, no database)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from dxf_celery.context import Context
from dxf_celery.proto import TaskBase, TaskState
from dxf_celery.taskexecutor import (
    SlotManager,
    clear_task_executors,
    get_task_executor_factory,
    register_task_type,
)

T0 = datetime(2026, 1, 1)


def task(task_id: int, slots: int, priority: int = 512, age: int = 0) -> TaskBase:
    return TaskBase(task_id, f"k{task_id}", "t", TaskState.RUNNING, 1, priority, slots, T0 + timedelta(seconds=age))


def test_alloc_free_and_counts() -> None:
    sm = SlotManager(4)
    assert sm.alloc(task(1, 3))
    assert not sm.alloc(task(1, 1))  # already holds slots
    assert not sm.alloc(task(2, 2))
    assert (sm.used_slots(), sm.available_slots()) == (3, 1)
    assert sm.alloc(task(3, 1))
    sm.free(1)
    sm.free(99)  # unknown: ignored
    assert (sm.used_slots(), sm.slots_of(3), sm.slots_of(1)) == (1, 1, None)


def test_can_alloc_names_victims_from_the_lowest_rank_up() -> None:
    sm = SlotManager(8)
    assert sm.alloc(task(1, 2, priority=100))
    assert sm.alloc(task(2, 3, priority=600))
    assert sm.alloc(task(3, 3, priority=500))
    ok, victims = sm.can_alloc(task(4, 3, priority=300))
    assert ok and [v.id for v in victims] == [2]
    ok, victims = sm.can_alloc(task(5, 6, priority=300))
    assert ok and [v.id for v in victims] == [2, 3]
    # never preempts a higher-ranked task: 7 slots would need task 1
    assert sm.can_alloc(task(6, 7, priority=300)) == (False, [])
    # equal priority: the older task ranks higher and is not a victim of a newer one
    assert sm.can_alloc(task(7, 3, priority=600, age=5)) == (False, [])
    # alloc never preempts by itself
    assert not sm.alloc(task(4, 3, priority=300))


def test_exchange_grows_only_into_free_slots() -> None:
    sm = SlotManager(4)
    assert sm.alloc(task(1, 2))
    assert sm.alloc(task(2, 1))
    assert not sm.exchange(task(3, 1))  # holds no slots
    assert not sm.exchange(task(1, 4))
    assert sm.exchange(task(1, 3))
    assert sm.available_slots() == 0
    assert sm.exchange(task(1, 1))
    assert (sm.slots_of(1), sm.available_slots()) == (1, 2)


def test_concurrent_allocs_never_exceed_capacity() -> None:
    sm = SlotManager(5)
    won: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def grab(i: int) -> None:
        barrier.wait()
        if sm.alloc(task(i, 1 + i % 2)):
            with lock:
                won.append(1 + i % 2)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == sm.used_slots() <= 5


def test_bad_capacity() -> None:
    with pytest.raises(ValueError, match="slot capacity"):
        SlotManager(0)


def test_register_overwrites_and_clear() -> None:
    clear_task_executors()

    def f1(ctx: Context, t: object, p: object) -> None: ...

    def f2(ctx: Context, t: object, p: object) -> None: ...

    register_task_type("x", f1)  # type: ignore[arg-type]
    assert get_task_executor_factory("x") is f1
    register_task_type("x", f2)  # type: ignore[arg-type]
    assert get_task_executor_factory("x") is f2
    assert get_task_executor_factory("y") is None
    clear_task_executors()
    assert get_task_executor_factory("x") is None
    with pytest.raises(ValueError):
        register_task_type("", f1)  # type: ignore[arg-type]
