"""The balancer plans on counts (one aggregate) and reads rows only to move them: the counts
plan must make exactly the moves DXF's row-by-row plan makes. The reference below is that row
plan as the balancer ran it before it planned on counts, kept here as the oracle."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from datetime import datetime

import pytest

from dxf_celery.proto import SubtaskBase, SubtaskState, TaskBase, TaskState
from dxf_celery.scheduler.balancer import load_of, pick_moves, plan_moves, plan_quota


def _reference_plan(
    task: TaskBase,
    active: Sequence[SubtaskBase],
    eligible: Sequence[str],
    used: dict[str, int],
    total_slots: int,
    live: Collection[str],
) -> tuple[list[SubtaskBase], list[str]]:
    adjusted = [n for n in eligible if used.get(n, 0) + task.concurrency <= total_slots]
    if not adjusted:
        return [], []
    by_node: dict[str, list[SubtaskBase]] = {}
    for s in sorted(active, key=lambda s: (s.state != SubtaskState.RUNNING, s.id)):
        by_node.setdefault(s.exec_id, []).append(s)
    if 0 < task.max_node_count < len(adjusted):
        adjusted = sorted(adjusted, key=lambda n: -len(by_node.get(n, [])))[: task.max_node_count]
    adjusted_set = set(adjusted)
    # A live node the task may not use keeps its running subtasks (a gone node keeps none).
    stays = {
        node: [s for s in subs if s.state == SubtaskState.RUNNING]
        for node, subs in by_node.items()
        if node not in adjusted_set and node in live
    }
    stays = {node: subs for node, subs in stays.items() if subs}
    avg, rem = divmod(len(active) - sum(len(subs) for subs in stays.values()), len(adjusted))
    to_move: list[SubtaskBase] = []
    target: dict[str, int] = {}
    kept: dict[str, int] = {}
    for node, subs in by_node.items():
        if node not in adjusted_set:
            if node in stays:  # its pending ones queue as a live node's do: the newest first
                to_move.extend(reversed([s for s in subs if s.state == SubtaskState.PENDING]))
            else:
                to_move.extend(subs)
            continue
        if rem > 0 and len(subs) >= avg + 1:
            target[node] = avg + 1
            rem -= 1
        else:
            target[node] = avg
        extra = len(subs) - target[node]
        keep = list(subs)
        while extra > 0 and keep and keep[-1].state == SubtaskState.PENDING:
            to_move.append(keep.pop())
            extra -= 1
        kept[node] = len(keep)
    for node in adjusted:
        if node not in target:
            target[node] = avg
            kept[node] = 0
    for node in sorted(adjusted, key=lambda n: n in by_node):
        if rem == 0:
            break
        if target[node] == avg:
            target[node] = avg + 1
            rem -= 1
    moved: list[SubtaskBase] = []
    for node in adjusted:
        while kept[node] < target[node] and to_move:
            s = to_move.pop()
            kept[node] += 1
            if s.exec_id != node:
                moved.append(SubtaskBase(**{**vars(s), "exec_id": node}))
    holding = [n for n in adjusted if kept[n] > 0] + list(stays)
    return moved, holding


def _task(concurrency: int, max_node_count: int) -> TaskBase:
    return TaskBase(
        id=1,
        key="k",
        type="t",
        state=TaskState.RUNNING,
        step=1,
        priority=512,
        concurrency=concurrency,
        create_time=datetime(2026, 1, 1),
        max_node_count=max_node_count,
    )


def _scenario(rng: random.Random) -> tuple[TaskBase, list[SubtaskBase], list[str], dict[str, int], list[str]]:
    nodes = [f"n{i}" for i in range(rng.randint(1, 6))]
    holders = nodes + [f"gone{i}" for i in range(rng.randint(0, 2))]
    ids = rng.sample(range(1, 400), rng.randint(0, 40))
    active = [
        SubtaskBase(
            id=i,
            task_id=1,
            step=1,
            type="t",
            state=SubtaskState.RUNNING if rng.random() < 0.3 else SubtaskState.PENDING,
            exec_id=rng.choice(holders),
            ordinal=i,
        )
        for i in ids
    ]
    eligible = rng.sample(nodes, rng.randint(1, len(nodes)))
    used = {n: rng.choice((0, 0, 2, 6, 8)) for n in nodes}
    return _task(rng.choice((1, 2, 4)), rng.choice((0, 0, 1, 2, 3))), active, eligible, used, nodes


@pytest.mark.parametrize("seed", range(8))
def test_the_counts_plan_makes_the_row_plans_moves(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        task, active, eligible, used, live = _scenario(rng)
        want_moves, want_holding = _reference_plan(task, active, eligible, used, 8, live)
        moves, holding = plan_moves(task, active, eligible, used, 8, live)
        assert [(m.id, m.exec_id) for m in moves] == [(m.id, m.exec_id) for m in want_moves]
        assert holding == want_holding
        quota = plan_quota(task, load_of(active), eligible, used, 8, live)
        # The counts alone say whether rows must be read at all, and who holds the task after.
        assert (quota.moves if quota else 0) == len(want_moves)
        assert list(quota.holding if quota else ()) == want_holding


def test_rows_that_changed_since_the_counts_move_as_found() -> None:
    """The counts said 2 leave n1, but only 1 pending row is left when the rows are read."""
    quota = plan_quota(
        _task(1, 0),
        load_of(
            [
                SubtaskBase(id=i, task_id=1, step=1, type="t", state=SubtaskState.PENDING, exec_id="n1", ordinal=i)
                for i in range(1, 5)
            ]
        ),
        ["n1", "n2"],
        {},
        8,
        ["n1", "n2"],
    )
    assert quota is not None and quota.leave == (("n1", 2),) and quota.take == (("n2", 2),)
    left = [SubtaskBase(id=4, task_id=1, step=1, type="t", state=SubtaskState.PENDING, exec_id="n1", ordinal=4)]
    moves = pick_moves(quota, lambda node, everything, n: left)
    assert [(m.id, m.exec_id) for m in moves] == [(4, "n2")]
