"""The scheduler's view of the worker nodes: who is alive, suspect or lost, and who may run a task.

Liveness comes from heartbeats in the node table (DXF asks etcd), judged on the database's
clock, in two stages:

* **suspect**: silent for longer than ``node_ttl``. Planning and the balancer stop using it
  and its pending subtasks move; its running ones stay its own, because a frozen VM or a long
  GC pause comes back and finishes them (a non-idempotent subtask moved would be lost).
* **lost**: silent for ``node_ttl + node_lost_grace``. The row is deleted, so the balancer
  moves its running subtasks too and DXF's rule applies on the new node (an idempotent one
  re-runs, a non-idempotent one reverts its task).

A silence only counts while the scheduler itself watched: heartbeats are judged after it
has reached the database for a full TTL without a gap (an outage, a pass that failed, or
no pass at all), so nodes that could not write during an outage the scheduler also saw get
a grace. And when every node is silent at once it is the database path, not the nodes:
nothing is judged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dxf_celery.proto import ManagedNode
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)

#: Nodes with this role serve tasks submitted without a target scope, when any exist.
BACKGROUND_ROLE = "background"


def filter_by_scope(nodes: Sequence[ManagedNode], scope: str) -> list[ManagedNode]:
    """Nodes that may run a task of ``scope``.

    Scope "" prefers the dedicated "background" nodes when there are any, else every node
    without a role; any other scope takes exactly the nodes with that role.
    """
    if scope == "":
        background = [n for n in nodes if n.role == BACKGROUND_ROLE]
        if background:
            return background
    return [n for n in nodes if n.role == scope]


@dataclass(frozen=True)
class Verdict:
    """One judgement of the node table."""

    live: list[ManagedNode] = field(default_factory=list)
    suspect: list[ManagedNode] = field(default_factory=list)
    #: Suspect for longer than the grace: to be deleted.
    lost: list[ManagedNode] = field(default_factory=list)
    #: Why nothing was judged this time ("" when it was).
    withheld: str = ""


def judge_nodes(nodes: Sequence[ManagedNode], now: datetime, ttl: float, lost_grace: float, watched: float) -> Verdict:
    """Split ``nodes`` by heartbeat age at server time ``now``; pure, so the rules are testable.

    ``watched`` is how long the scheduler has reached the database without a gap: under a
    TTL, or when every node is silent, everybody counts as live.
    """
    suspect_before = now - timedelta(seconds=ttl)
    lost_before = suspect_before - timedelta(seconds=lost_grace)
    silent = [n for n in nodes if n.heartbeat is None or n.heartbeat < suspect_before]
    if not silent:
        return Verdict(live=list(nodes))
    if watched < ttl:
        return Verdict(live=list(nodes), withheld=f"the scheduler has watched the database for {watched:.1f}s only")
    if len(silent) == len(nodes):
        return Verdict(live=list(nodes), withheld="every node is silent: the database path, not the nodes, failed")
    lost = [n for n in silent if n.heartbeat is None or n.heartbeat < lost_before]
    lost_ids = {n.id for n in lost}
    return Verdict(
        live=[n for n in nodes if n not in silent],
        suspect=[n for n in silent if n.id not in lost_ids],
        lost=lost,
    )


class ContactWatch:
    """How long this scheduler has been reaching the database without a gap (monotonic seconds).

    A gap is a failed call (:meth:`lost`) or more than ``max_gap`` seconds between two
    contacts (the process did not run passes: beat gone, a freeze, a lease that was elsewhere).
    """

    def __init__(self) -> None:
        self._since: float | None = None
        self._last: float | None = None

    def contact(self, max_gap: float, now: float | None = None) -> float:
        """Record a successful contact; returns how long contact has been unbroken."""
        now = time.monotonic() if now is None else now
        if self._since is None or self._last is None or now - self._last > max_gap:
            self._since = now
        self._last = now
        return now - self._since

    def lost(self) -> None:
        """The database could not be reached: the watch starts again at the next contact."""
        self._since = self._last = None


class NodeManager:
    """Judges the nodes each pass, deletes lost ones and caches the rest for the pass."""

    def __init__(self, task_manager: TaskManager) -> None:
        self._tm = task_manager
        self._lock = threading.Lock()
        self._nodes: list[ManagedNode] = []
        self._suspect: list[ManagedNode] = []
        self.watch = ContactWatch()
        self._withheld = ""

    def maintain_live_nodes(self, ttl_seconds: float, lost_grace: float = 0.0) -> list[str]:
        """Judge the node table, delete the lost nodes and cache the others; returns the lost ids."""
        try:
            now, nodes = self._tm.get_nodes_at_server_time()
        except Exception:
            self.watch.lost()
            raise
        watched = self.watch.contact(ttl_seconds / 2)
        verdict = judge_nodes(nodes, now, ttl_seconds, lost_grace, watched)
        if verdict.withheld and verdict.withheld != self._withheld:
            logger.warning("not judging node heartbeats yet: %s", verdict.withheld)
        self._withheld = verdict.withheld
        lost = [n.id for n in verdict.lost]
        if lost:
            cutoff = now - timedelta(seconds=ttl_seconds + lost_grace)
            self._tm.delete_dead_nodes(lost, silent_since=cutoff)
            logger.warning(
                "deleted nodes without a heartbeat for %.1fs (TTL + lost grace): %s",
                ttl_seconds + lost_grace,
                ", ".join(lost),
            )
        newly = {n.id for n in verdict.suspect} - {n.id for n in self.suspect_nodes()}
        if newly:
            logger.warning(
                "nodes without a heartbeat for %.1fs are suspect (their pending subtasks move): %s",
                ttl_seconds,
                ", ".join(sorted(newly)),
            )
        with self._lock:
            self._nodes = verdict.live
            self._suspect = verdict.suspect
        return lost

    def contact_ok(self, ttl_seconds: float) -> None:
        """The database answered (the lease, a whole pass): keeps the watch unbroken across slow calls."""
        self.watch.contact(ttl_seconds / 2)

    def contact_lost(self) -> None:
        self.watch.lost()

    def refresh_nodes(self) -> list[ManagedNode]:
        """Reload the node table into the cache (ordered by id), keeping suspect nodes out."""
        suspect = {n.id for n in self.suspect_nodes()}
        nodes = [n for n in self._tm.get_all_nodes() if n.id not in suspect]
        with self._lock:
            self._nodes = nodes
        return list(nodes)

    def get_nodes(self) -> list[ManagedNode]:
        """The live nodes as of the last judgement (suspect ones excluded)."""
        with self._lock:
            return list(self._nodes)

    def suspect_nodes(self) -> list[ManagedNode]:
        """Nodes silent past the TTL but within the lost grace: they keep their running subtasks."""
        with self._lock:
            return list(self._suspect)
