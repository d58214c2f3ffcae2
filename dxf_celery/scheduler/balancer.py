"""The balancer: keeps each task's active subtasks spread evenly over live eligible nodes.

It is also the failover path: subtasks of a node that was deleted (lost: no heartbeat for
the TTL plus the lost grace) or cut by ``max_node_count`` move, running ones included, to the
remaining nodes. A suspect node (silent past the TTL only) loses its pending subtasks but
keeps its running ones, which it finishes if it comes back within the grace. Between live
nodes only pending subtasks move, because a running one would be abandoned half done. Every
move is guarded by the state read, so a subtask that started meanwhile stays where it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dxf_celery.proto import SubtaskBase, SubtaskState, TaskBase
from dxf_celery.scheduler.interfaces import Scheduler
from dxf_celery.scheduler.nodes import NodeManager, filter_by_scope
from dxf_celery.scheduler.slots import SlotManager
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)


def plan_moves(
    task: TaskBase,
    active: Sequence[SubtaskBase],
    eligible: Sequence[str],
    used: dict[str, int],
    total_slots: int,
) -> tuple[list[SubtaskBase], list[str]]:
    """Decide which subtasks move where; returns (moved copies with new exec_id, nodes used).

    Pure function, so the distribution rules are testable without a database.
    """
    adjusted = [n for n in eligible if used.get(n, 0) + task.concurrency <= total_slots]
    if not adjusted:
        return [], []
    by_node: dict[str, list[SubtaskBase]] = {}
    for s in sorted(active, key=lambda s: (s.state != SubtaskState.RUNNING, s.id)):
        by_node.setdefault(s.exec_id, []).append(s)
    if 0 < task.max_node_count < len(adjusted):
        # Keep the nodes that already hold the most subtasks: the fewest moves.
        adjusted = sorted(adjusted, key=lambda n: -len(by_node.get(n, [])))[: task.max_node_count]
    avg, rem = divmod(len(active), len(adjusted))
    adjusted_set = set(adjusted)
    to_move: list[SubtaskBase] = []
    target: dict[str, int] = {}
    kept: dict[str, int] = {}
    for node, subs in by_node.items():
        if node not in adjusted_set:
            to_move.extend(subs)  # dead, full or cut: everything goes, running too
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
    # The "+1" quotas left go to adjusted nodes in order (those holding nothing come first,
    # as their target is still avg): every subtask must find a place.
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
    holding = [n for n in adjusted if kept[n] > 0]
    return moved, holding


class Balancer:
    """One balancing round over every scheduled task, in rank order."""

    def __init__(self, task_manager: TaskManager, node_manager: NodeManager, slot_manager: SlotManager) -> None:
        self._tm = task_manager
        self._nodes = node_manager
        self._slots = slot_manager

    def balance(self, schedulers: Sequence[Scheduler]) -> int:
        """Rebalance each task; returns the number of subtasks moved."""
        nodes = self._nodes.get_nodes()
        if not nodes:
            return 0
        live = {n.id for n in nodes}
        suspect = {n.id for n in self._nodes.suspect_nodes()}
        used = {n.id: 0 for n in nodes}
        moved_total = 0
        for sched in schedulers:
            task = sched.get_task()
            eligible_fn = getattr(sched, "eligible_exec_ids", None)
            if eligible_fn is not None:
                eligible = [n for n in eligible_fn(for_balance=True) if n in live]
            else:
                eligible = [n.id for n in filter_by_scope(nodes, task.target_scope)]
            if not eligible:
                continue
            active = _movable(self._tm.get_active_subtasks(task.id), suspect)
            if not active:
                continue
            moves, holding = plan_moves(task, active, eligible, used, self._slots.total_slots or _max_cpu(nodes))
            if moves:
                done = self._tm.update_subtasks_exec_ids(moves)
                moved_total += done
                logger.info("task %d: moved %d of %d subtasks to balance %s", task.id, done, len(moves), holding)
            for n in holding:
                used[n] = used.get(n, 0) + task.concurrency
        return moved_total


def _movable(active: Sequence[SubtaskBase], suspect: set[str]) -> list[SubtaskBase]:
    """The subtasks the balancer may place: a suspect node's running ones stay its own."""
    return [s for s in active if not (s.state == SubtaskState.RUNNING and s.exec_id in suspect)]


def _max_cpu(nodes: Sequence[object]) -> int:
    return max((getattr(n, "cpu_count", 0) for n in nodes), default=0)
