"""The balancer: keeps each task's active subtasks spread evenly over live eligible nodes.

It is also the failover path: subtasks of a node that was deleted (lost: no heartbeat for
the TTL plus the lost grace) move, running ones included, to the remaining nodes. A suspect
node (silent past the TTL only) loses its pending subtasks but keeps its running ones, which
it finishes if it comes back within the grace. Between live nodes only pending subtasks move,
because a running one would be abandoned half done (an idempotent one runs twice, a
non-idempotent one fails its task): that holds as well for a live node the task may no longer
use (full with higher-ranked tasks, cut by ``max_node_count``, out of scope), which keeps its
running subtasks and gives up its pending ones. (DXF moves those running ones too.) Every
move is guarded by the state read, so a subtask that started meanwhile stays where it is.

A round plans on counts, not rows: one aggregate (:meth:`TaskManager.get_live_load`) gives
every task's pending and running subtasks per node, and :func:`plan_quota` decides from them
how many leave each node and how many each node takes. Rows are read only for a task that
has subtasks to move, and only those rows (a lost node's, or the newest pending ones of a
node over its quota). A task whose inputs (nodes, load, slots) did not change since a round
that moved nothing is not planned again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass

from dxf_celery.proto import LiveLoad, NodeLoad, SubtaskBase, SubtaskState, TaskBase
from dxf_celery.scheduler.interfaces import Scheduler
from dxf_celery.scheduler.nodes import NodeManager, filter_by_scope
from dxf_celery.scheduler.slots import SlotManager
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)

#: Rows of one node to move: ``(exec_id, everything)``; everything False = its newest pending.
RowSource = Callable[[str, bool, int], list[SubtaskBase]]


@dataclass(frozen=True)
class Quota:
    """What a balancing plan does with one task, in counts (DXF's ``balanceSubtasks``)."""

    #: Nodes that give subtasks, in the order their subtasks queue up to move, with how many
    #: (None: all of them; the node is dead, full or cut).
    leave: tuple[tuple[str, int | None], ...]
    #: Adjusted nodes in order, with how many subtasks each takes.
    take: tuple[tuple[str, int], ...]
    #: Nodes that hold at least one subtask afterwards (their slots count as used): the
    #: adjusted ones, then live ones outside them that keep running subtasks.
    holding: tuple[str, ...]

    @property
    def moves(self) -> int:
        return sum(n for _, n in self.take)


def _order_key(cell: NodeLoad) -> tuple[int, int]:
    """Where a node's first subtask sorts among rows ordered running first, then by id."""
    return (0, cell.first_running) if cell.running else (1, cell.first_pending)


def plan_quota(
    task: TaskBase,
    loads: dict[str, NodeLoad],
    eligible: Sequence[str],
    used: dict[str, int],
    total_slots: int,
    live: Collection[str],
) -> Quota | None:
    """The plan for one task from its per-node counts; None when no eligible node has room.

    ``live`` are the nodes alive now: one of them outside the nodes the task uses keeps its
    running subtasks (only a gone node's move). Pure function, so the distribution rules are
    testable without a database.
    """
    adjusted = [n for n in eligible if used.get(n, 0) + task.concurrency <= total_slots]
    if not adjusted:
        return None
    by_node = sorted((n for n, c in loads.items() if c.total > 0), key=lambda n: _order_key(loads[n]))
    size = {n: loads[n].total for n in by_node}
    if 0 < task.max_node_count < len(adjusted):
        # Keep the nodes that already hold the most subtasks: the fewest moves.
        adjusted = sorted(adjusted, key=lambda n: -size.get(n, 0))[: task.max_node_count]
    adjusted_set = set(adjusted)
    # Live nodes the task may not use keep their running subtasks: those need no place.
    stay = {n: loads[n].running for n in by_node if n not in adjusted_set and n in live and loads[n].running}
    avg, rem = divmod(sum(size.values()) - sum(stay.values()), len(adjusted))
    leave: list[tuple[str, int | None]] = []
    queued = 0
    target: dict[str, int] = {}
    kept: dict[str, int] = {}
    for node in by_node:
        if node not in adjusted_set:
            if node in stay:
                out = loads[node].pending  # full, cut or out of scope: its pending ones go
                if out:
                    leave.append((node, out))
                    queued += out
            else:
                leave.append((node, None))  # gone (or holding no running one): everything goes
                queued += size[node]
            continue
        if rem > 0 and size[node] >= avg + 1:
            target[node] = avg + 1
            rem -= 1
        else:
            target[node] = avg
        # Only pending subtasks leave a live node, the newest first.
        out = max(0, min(size[node] - target[node], loads[node].pending))
        if out:
            leave.append((node, out))
            queued += out
        kept[node] = size[node] - out
    for node in adjusted:
        if node not in target:
            target[node] = avg
            kept[node] = 0
    # The "+1" quotas left go to adjusted nodes in order (those holding nothing come first,
    # as their target is still avg): every subtask must find a place.
    for node in sorted(adjusted, key=lambda n: n in size):
        if rem == 0:
            break
        if target[node] == avg:
            target[node] = avg + 1
            rem -= 1
    take: list[tuple[str, int]] = []
    for node in adjusted:
        n = max(0, min(target[node] - kept[node], queued))
        if n:
            take.append((node, n))
            kept[node] += n
            queued -= n
    holding = tuple(n for n in adjusted if kept[n] > 0) + tuple(stay)
    return Quota(tuple(leave), tuple(take), holding)


def pick_moves(quota: Quota, rows_of: RowSource) -> list[SubtaskBase]:
    """The subtasks a quota moves, as copies with their new ``exec_id``.

    ``rows_of(node, everything, n)`` gives a node's rows: all of them (running first, by id)
    or its ``n`` newest pending ones (by id). Rows may have changed since the counts were
    read; the plan then moves what it finds, and every move stays guarded by its state.
    """
    queue: list[SubtaskBase] = []
    for node, n in quota.leave:
        if n is None:
            queue.extend(rows_of(node, True, 0))
        else:
            queue.extend(reversed(rows_of(node, False, n)[-n:]))
    moved: list[SubtaskBase] = []
    for node, n in quota.take:
        for _ in range(n):
            if not queue:
                return moved
            s = queue.pop()
            if s.exec_id != node:
                moved.append(SubtaskBase(**{**vars(s), "exec_id": node}))
    return moved


def load_of(active: Sequence[SubtaskBase]) -> dict[str, NodeLoad]:
    """Per-node counts of a task's active rows (what the aggregate gives, from rows)."""
    cells: dict[str, dict[str, int]] = {}
    for s in sorted(active, key=lambda s: s.id):
        cell = cells.setdefault(s.exec_id, {"pending": 0, "running": 0, "first_pending": 0, "first_running": 0})
        key = "running" if s.state == SubtaskState.RUNNING else "pending"
        cell[key] += 1
        cell["first_" + key] = cell["first_" + key] or s.id
    return {n: NodeLoad(concurrency=0, **c) for n, c in cells.items()}


def plan_moves(
    task: TaskBase,
    active: Sequence[SubtaskBase],
    eligible: Sequence[str],
    used: dict[str, int],
    total_slots: int,
    live: Collection[str],
) -> tuple[list[SubtaskBase], list[str]]:
    """Decide which of ``active`` move where; returns (moved copies with new exec_id, nodes used).

    The same plan as the balancer makes from counts, on rows held in memory.
    """
    quota = plan_quota(task, load_of(active), eligible, used, total_slots, live)
    if quota is None:
        return [], []
    by_node: dict[str, list[SubtaskBase]] = {}
    for s in sorted(active, key=lambda s: (s.state != SubtaskState.RUNNING, s.id)):
        by_node.setdefault(s.exec_id, []).append(s)

    def rows_of(node: str, everything: bool, n: int) -> list[SubtaskBase]:
        rows = by_node.get(node, [])
        return list(rows) if everything else [s for s in rows if s.state == SubtaskState.PENDING][-n:]

    return pick_moves(quota, rows_of), list(quota.holding)


class Balancer:
    """One balancing round over every scheduled task, in rank order."""

    def __init__(self, task_manager: TaskManager, node_manager: NodeManager, slot_manager: SlotManager) -> None:
        self._tm = task_manager
        self._nodes = node_manager
        self._slots = slot_manager
        #: Per task: the inputs of its last plan that moved nothing, and the nodes it held.
        self._settled: dict[int, tuple[Hashable, tuple[str, ...]]] = {}
        #: The load read by the last round (the manager reuses it for slot accounting).
        self.last_load: LiveLoad | None = None

    def balance(self, schedulers: Sequence[Scheduler]) -> int:
        """Rebalance each task; returns the number of subtasks moved."""
        nodes = self._nodes.get_nodes()
        if not nodes:
            return 0
        live = {n.id for n in nodes}
        suspect = {n.id for n in self._nodes.suspect_nodes()}
        used = {n.id: 0 for n in nodes}
        total_slots = self._slots.total_slots or _max_cpu(nodes)
        load = self._tm.get_live_load()
        self.last_load = load
        settled: dict[int, tuple[Hashable, tuple[str, ...]]] = {}
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
            loads = _movable(load.get(task.id, {}), suspect)
            if not loads:
                continue
            key = (
                task.concurrency,
                task.max_node_count,
                total_slots,
                tuple(eligible),
                tuple((n, used.get(n, 0)) for n in eligible),
                tuple(sorted(loads.items())),
            )
            last = self._settled.get(task.id)
            if last is not None and last[0] == key:
                holding: Sequence[str] = last[1]
                settled[task.id] = last
            else:
                quota = plan_quota(task, loads, eligible, used, total_slots, live | suspect)
                if quota is None:
                    continue
                holding = quota.holding
                if quota.moves:
                    moved_total += self._move(task, quota, live | suspect)
                else:
                    settled[task.id] = (key, quota.holding)
            for n in holding:
                used[n] = used.get(n, 0) + task.concurrency
        self._settled = settled
        return moved_total

    def _move(self, task: TaskBase, quota: Quota, alive: set[str]) -> int:
        """Move what ``quota`` says; a node in ``alive`` gives pending rows only, whatever the
        counts said (a subtask may have started there since they were read)."""

        def rows_of(node: str, everything: bool, n: int) -> list[SubtaskBase]:
            if everything:
                rows = self._tm.get_node_subtasks(task.id, node, pending_only=node in alive)
                return sorted(rows, key=lambda s: (s.state != SubtaskState.RUNNING, s.id))
            return self._tm.get_node_subtasks(task.id, node, pending_only=True, newest=n)

        moves = pick_moves(quota, rows_of)
        if not moves:
            return 0
        done = self._tm.update_subtasks_exec_ids(moves)
        logger.info("task %d: moved %d of %d subtasks to balance %s", task.id, done, len(moves), list(quota.holding))
        return done


def _movable(loads: dict[str, NodeLoad], suspect: set[str]) -> dict[str, NodeLoad]:
    """The counts the balancer may place: a suspect node's running subtasks stay its own."""
    out = {}
    for node, cell in loads.items():
        if node in suspect:
            cell = NodeLoad(pending=cell.pending, concurrency=cell.concurrency, first_pending=cell.first_pending)
        if cell.total:
            out[node] = cell
    return out


def _max_cpu(nodes: Sequence[object]) -> int:
    return max((getattr(n, "cpu_count", 0) for n in nodes), default=0)
