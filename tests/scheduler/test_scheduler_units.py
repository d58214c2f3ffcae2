"""Pure rules of the scheduler: scope filter, slot reservation, balancing plan (no database)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from dxf_celery.proto import ManagedNode, SubtaskBase, SubtaskState, TaskBase, TaskState
from dxf_celery.scheduler import SchedulerIntervals, SlotManager, filter_by_scope
from dxf_celery.scheduler.balancer import plan_moves


def _task(task_id: int, concurrency: int = 1, priority: int = 512, max_node_count: int = 0) -> TaskBase:
    return TaskBase(
        id=task_id,
        key=f"k{task_id}",
        type="t",
        state=TaskState.RUNNING,
        step=1,
        priority=priority,
        concurrency=concurrency,
        create_time=datetime(2026, 1, 1),
        max_node_count=max_node_count,
    )


def _subs(*placement: tuple[str, str]) -> list[SubtaskBase]:
    return [
        SubtaskBase(id=i + 1, task_id=1, step=1, type="t", state=SubtaskState(st), exec_id=node, ordinal=i + 1)
        for i, (node, st) in enumerate(placement)
    ]


#: The nodes alive in the balancing tests ("dead" and "gone" are not).
LIVE = frozenset({"a", "b", "c"})


def _nodes(*ids: str, role: str = "", cpu: int = 8) -> list[ManagedNode]:
    return [ManagedNode(i, role, cpu) for i in ids]


def test_filter_by_scope() -> None:
    plain = _nodes("a", "b")
    gpu = _nodes("g", role="gpu")
    bg = _nodes("x", role="background")
    assert [n.id for n in filter_by_scope(plain + gpu, "")] == ["a", "b"]
    assert [n.id for n in filter_by_scope(plain + gpu + bg, "")] == ["x"]
    assert [n.id for n in filter_by_scope(plain + gpu, "gpu")] == ["g"]
    assert filter_by_scope(plain, "background") == []


def test_slot_reservation_by_stripes_then_by_node() -> None:
    slots = SlotManager()
    assert slots.can_reserve(_task(1)) == ("", False)  # no node: nothing can start
    slots.update(_nodes("a", "b", cpu=4), {"a": 4})
    mid = _task(1, concurrency=3, priority=500)
    assert slots.can_reserve(mid) == ("", True)
    slots.reserve(mid, "")
    low = _task(2, concurrency=2, priority=600)
    # Stripes above it use 3 of 4: it does not fit by stripes, but node b has room.
    assert slots.can_reserve(low) == ("b", True)
    slots.reserve(low, "b")
    low2 = _task(3, concurrency=3, priority=700)
    assert slots.can_reserve(low2) == ("", False)
    high = _task(4, concurrency=4, priority=1)
    assert slots.can_reserve(high) == ("", True)  # nothing ranks above it: it takes the stripes
    slots.unreserve(low, "b")
    assert slots.can_reserve(low2) == ("b", True)


def test_adjust_eligible_nodes_prefers_free_ones() -> None:
    slots = SlotManager()
    slots.update(_nodes("a", "b", "c", cpu=4), {"a": 4, "b": 1})
    assert slots.adjust_eligible_nodes(["a", "b", "c"], 3) == ["b", "c"]
    assert slots.adjust_eligible_nodes(["a"], 3) == ["a"]  # nobody fits: keep them all


def test_balance_spreads_pending_keeps_running() -> None:
    active = _subs(
        ("a", "running"), ("a", "pending"), ("a", "pending"), ("a", "pending"), ("a", "pending"), ("a", "pending")
    )
    moves, holding = plan_moves(_task(1), active, ["a", "b", "c"], {}, 8, LIVE)
    after = Counter({"a": 6})
    for m in moves:
        after[m.exec_id] += 1
        after["a"] -= 1
        assert m.state == SubtaskState.PENDING
    assert after == Counter({"a": 2, "b": 2, "c": 2})
    assert holding == ["a", "b", "c"]


def test_balance_moves_everything_off_dead_nodes() -> None:
    active = _subs(("dead", "running"), ("dead", "pending"), ("a", "running"), ("b", "pending"))
    moves, _ = plan_moves(_task(1), active, ["a", "b"], {}, 8, LIVE)
    assert sorted(m.id for m in moves) == [1, 2]
    assert Counter(m.exec_id for m in moves) == Counter({"a": 1, "b": 1})


def test_balance_places_every_subtask_of_a_gone_node_when_the_live_ones_hold_exactly_avg() -> None:
    """5 subtasks on 2 live nodes (2 + 2) and 1 off-node: the remainder quota must take it."""
    active = _subs(("a", "pending"), ("a", "pending"), ("b", "pending"), ("b", "pending"), ("gone", "pending"))
    moves, holding = plan_moves(_task(1), active, ["a", "b"], {}, 8, LIVE)
    assert [(m.id, m.exec_id) for m in moves] == [(5, "a")]
    assert holding == ["a", "b"]


def test_balance_never_moves_running_between_live_nodes() -> None:
    active = _subs(("a", "running"), ("a", "running"), ("a", "running"))
    moves, _ = plan_moves(_task(1), active, ["a", "b", "c"], {}, 8, LIVE)
    assert moves == []


def test_balance_max_node_count_keeps_busiest_nodes() -> None:
    active = _subs(("a", "running"), ("b", "running"), ("b", "pending"), ("c", "pending"))
    moves, holding = plan_moves(_task(1, max_node_count=2), active, ["a", "b", "c"], {}, 8, LIVE)
    # b holds the most, then a (first of the ties): c is cut and its subtask moves.
    assert [(m.id, m.exec_id) for m in moves] == [(4, "a")]
    assert sorted(holding) == ["a", "b"]


def test_balance_keeps_running_subtasks_on_a_live_node_it_may_no_longer_use() -> None:
    """Full (higher-ranked tasks took its slots) or cut by max_node_count: the pending
    subtasks of a live node leave it, its running ones stay and its slots count as used."""
    active = _subs(("a", "running"), ("a", "pending"), ("a", "pending"), ("b", "pending"))
    moves, holding = plan_moves(_task(1, concurrency=2), active, ["a", "b"], {"a": 8}, 8, LIVE)
    assert sorted((m.id, m.exec_id) for m in moves) == [(2, "b"), (3, "b")]
    assert holding == ["b", "a"]
    cut = _subs(("a", "running"), ("b", "running"), ("b", "pending"), ("c", "running"), ("c", "pending"))
    moves, holding = plan_moves(_task(1, max_node_count=1), cut, ["a", "b", "c"], {}, 8, LIVE)
    assert [(m.id, m.exec_id) for m in moves] == [(5, "b")]
    assert holding == ["b", "a", "c"]
    # Not alive any more: everything goes, running too.
    moves, _ = plan_moves(_task(1, concurrency=2), active, ["b"], {}, 8, frozenset({"b"}))
    assert sorted(m.id for m in moves) == [1, 2, 3]


def test_balance_skips_full_nodes() -> None:
    active = _subs(("a", "pending"), ("a", "pending"))
    moves, holding = plan_moves(_task(1, concurrency=4), active, ["a", "b"], {"a": 6}, 8, LIVE)
    assert {m.exec_id for m in moves} == {"b"} and holding == ["b"]
    assert plan_moves(_task(1, concurrency=4), active, ["a"], {"a": 8}, 8, LIVE) == ([], [])


def test_fast_intervals_are_fast() -> None:
    fast = SchedulerIntervals.fast()
    default = SchedulerIntervals()
    assert fast.schedule < default.schedule and fast.node_ttl < default.node_ttl
    assert default.subtask_keep_seconds == 14 * 86400


def test_reservation_counts_only_the_nodes_a_task_may_use() -> None:
    slots = SlotManager()
    slots.update(_nodes("a", "b", cpu=2) + _nodes("g", role="gpu", cpu=2), {"g": 2})
    gpu_high = _task(1, concurrency=2, priority=1)
    assert slots.check(gpu_high, ["g"]).ok  # stripes: nothing ranks above it
    slots.reserve(gpu_high, "", ["g"])
    gpu_low = _task(2, concurrency=2, priority=2)
    waits = slots.check(gpu_low, ["g"])
    assert not waits.ok and "higher-ranked work holds them" in waits.reason
    # The gpu stripes do not touch a and b: a lower-ranked task there reserves by stripes.
    assert slots.check(_task(3, concurrency=2, priority=900), ["a", "b"]).exec_id == ""
    assert slots.check(_task(3, concurrency=2, priority=900), ["a", "b"]).ok
    nowhere = slots.check(_task(4), [])
    assert not nowhere.ok and "no live node may run it" in nowhere.reason
    assert not slots.check(_task(4), ["gone"]).ok  # eligible but not live
    assert slots.capacity() == 6


def test_planning_usage_is_read_once_then_counted_in() -> None:
    slots = SlotManager()
    reads: list[int] = []

    def fetch() -> dict[str, int]:
        reads.append(1)
        return {"a": 1}

    slots.update(_nodes("a", "b", cpu=4), None)  # reuse the last read: stale for planning
    slots.used_for_planning(fetch)
    slots.used_for_planning(fetch)
    assert len(reads) == 1 and slots.used_slots() == {"a": 1, "b": 0}
    slots.account({"a", "b"}, 2)
    assert slots.used_slots() == {"a": 3, "b": 2}
    slots.update(_nodes("a", "b", cpu=4), None)  # the next pass keeps the adjusted numbers
    assert slots.used_slots() == {"a": 3, "b": 2}
    slots.mark_stale()
    slots.used_for_planning(fetch)
    assert len(reads) == 2 and slots.used_slots() == {"a": 1, "b": 0}
