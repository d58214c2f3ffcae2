"""The scheduler manager: one pass = node upkeep, per-task state machines, balancing, cleanup.

A pass is a plain function call (:meth:`Manager.schedule_once`) so that Celery beat can drive
it on any worker; a database lease makes one owner run it at a time, and a crashed owner is
replaced once its lease expires. The lease is only an optimisation: every write of a pass is
a compare-and-set and subtask ordinals are unique, so two owners at once (a lease taken over
mid-pass, a network partition) cannot plan a step twice or apply a transition twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias

from dxf_celery.context import Context
from dxf_celery.errors import DXFError, TaskNotFoundError, UnknownTaskTypeError, is_transient_error
from dxf_celery.proto import ManagedNode, SubtaskState, TaskBase, TaskState, used_slots
from dxf_celery.retry import ExponentialBackoff
from dxf_celery.scheduler.balancer import Balancer
from dxf_celery.scheduler.cleanup import cleanup_finished_tasks, gc_subtask_history
from dxf_celery.scheduler.interfaces import Scheduler
from dxf_celery.scheduler.nodes import NodeManager, filter_by_scope
from dxf_celery.scheduler.param import Param, SchedulerIntervals
from dxf_celery.scheduler.planning import PlanningRetries
from dxf_celery.scheduler.register import SchedulerFactory, get_scheduler_factory
from dxf_celery.scheduler.slots import SlotManager
from dxf_celery.scheduler.switches import StepSwitches
from dxf_celery.storage import TaskManager
from dxf_celery.storage.retention import purge_history

logger = logging.getLogger(__name__)

#: Name of the database lease the scheduler pass runs under.
LEASE_NAME = "scheduler"
#: Lease that spaces the subtask history GC over the whole cluster.
GC_LEASE_NAME = "scheduler-subtask-gc"

_RESOURCE_STATES = (TaskState.PENDING, TaskState.RUNNING, TaskState.RESUMING)


#: Passes run at once, in a row, after passes that did work (``last_pass_worked``); then the
#: interval. A few, so that a task whose every pass writes cannot make the loop a busy one.
MAX_FOLLOW_UP_PASSES = 3

#: At most this many tasks that waited last pass widen the next pass's look at the task table.
MAX_WAITING_LOOKAHEAD = 1024


#: What the pass read in batch: the ids asked for, their live bases, their current-step counts.
_Prefetched: TypeAlias = tuple[set[int], dict[int, TaskBase], dict[int, dict[SubtaskState, int]]]


@dataclass
class _Entry:
    scheduler: Scheduler
    #: The task as reserved, to undo exactly that reservation.
    reserved: TaskBase
    exec_id: str
    allocated: bool


@dataclass
class _Parked:
    """A scheduler made for a task that could not reserve: kept so the next pass need not rebuild it."""

    base: TaskBase
    scheduler: Scheduler


class Manager:
    """Runs scheduler passes for the whole cluster while it holds the lease."""

    def __init__(
        self,
        task_manager: TaskManager,
        *,
        owner_id: str,
        lease_ttl: float = 5.0,
        intervals: SchedulerIntervals | None = None,
    ) -> None:
        if not owner_id:
            raise ValueError("owner_id must name this scheduler instance (e.g. the worker's nodename)")
        self.task_manager = task_manager
        self.owner_id = owner_id
        self.lease_ttl = lease_ttl
        self.intervals = intervals or SchedulerIntervals()
        self.ctx = Context.background()
        self.node_manager = NodeManager(task_manager)
        self.slot_manager = SlotManager()
        self.balancer = Balancer(task_manager, self.node_manager, self.slot_manager)
        self.step_switches = StepSwitches(task_manager)
        self._schedulers: dict[int, _Entry] = {}
        self._parked: dict[int, _Parked] = {}
        self._waiting: dict[int, str] = {}
        #: Tasks that could not reserve on their own nodes while others had room (last pass):
        #: the next pass looks that much further down the rank order, past them.
        self._unplaceable = 0
        self._used_read_at = -math.inf
        iv = self.intervals
        self.planning = PlanningRetries(
            iv.planning_max_retries, ExponentialBackoff(iv.schedule, 2.0, iv.planning_retry_max_interval)
        )
        self._pass_lock = threading.Lock()
        self._last_balance = -math.inf
        self._last_cleanup = -math.inf
        self._last_gc = -math.inf
        self._cleanup_due = True
        self._unreachable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Whether the last pass that held the lease wrote a task transition or let a scheduler
        #: go: the next step of some task (or a waiting task) may be ready now, not a tick later.
        self.last_pass_worked = False

    # ------------------------------------------------------------------ public

    def schedule_once(self) -> bool:
        """Run one full pass if this instance holds (or can take) the lease.

        Returns whether it held the lease. Safe to call from several threads or processes.
        """
        with self._pass_lock:
            try:
                held = self.task_manager.try_acquire_lease(LEASE_NAME, self.owner_id, self.lease_ttl)
            except DXFError as err:
                logger.warning("scheduler %s could not reach the lease: %s", self.owner_id, err)
                held = False
            if not held:
                self.node_manager.contact_lost()  # not watching the nodes: a grace when it takes over
                self._drop_all()
                return False
            self.node_manager.contact_ok(self.intervals.node_ttl)
            self._run_pass()
            return True

    def start(self) -> None:
        """Run :meth:`schedule_once` every ``intervals.schedule`` seconds in a thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"dxf-scheduler-{self.owner_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, drop every scheduler and give the lease up for a fast takeover."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.release()

    def release(self) -> None:
        """Give up the lease (at shutdown) so another owner takes over at once."""
        with self._pass_lock:
            self._drop_all()
            try:
                self.task_manager.release_lease(LEASE_NAME, self.owner_id)
            except DXFError as err:
                logger.warning("scheduler %s could not release its lease: %s", self.owner_id, err)

    def scheduled_task_ids(self) -> list[int]:
        """Ids of the tasks that currently have a scheduler here (for inspection and tests)."""
        return sorted(self._schedulers)

    # ------------------------------------------------------------------ the pass

    def _loop(self) -> None:
        more = 0
        while not self._stop.is_set():
            worked = False
            try:
                worked = self.schedule_once() and self.last_pass_worked
            except Exception:
                logger.exception("scheduler pass failed")
            # A pass that did work is followed by another at once, a few in a row at most.
            more = more + 1 if worked else 0
            if not worked or more > MAX_FOLLOW_UP_PASSES:
                more = 0
                self._stop.wait(self.intervals.schedule)

    def _run_pass(self) -> None:
        iv = self.intervals
        now = time.monotonic()
        self._unreachable = False
        self.last_pass_worked = False
        self._guarded("node manager", self._maintain_nodes)
        self._guarded("scheduler manager", self._schedule_tasks)
        if now - self._last_balance >= iv.balance:
            self._last_balance = now
            self._guarded("balancer", lambda: self.balancer.balance(self._ranked_schedulers()))
        if self._cleanup_due or now - self._last_cleanup >= iv.cleanup:
            self._cleanup_due = False
            self._last_cleanup = now
            self._guarded("cleanup", lambda: cleanup_finished_tasks(self.ctx, self.task_manager))
        if now - self._last_gc >= iv.gc_subtasks:
            self._last_gc = now
            self._guarded("subtask history gc", self._gc_subtasks)
        if self._unreachable:
            self.node_manager.contact_lost()
        else:
            self.node_manager.contact_ok(iv.node_ttl)

    def _guarded(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except DXFError as err:
            self._unreachable = self._unreachable or is_transient_error(err)
            logger.warning("scheduler %s: %s failed: %s", self.owner_id, what, err)
        except Exception:
            logger.exception("scheduler %s: %s failed", self.owner_id, what)

    def _gc_subtasks(self) -> None:
        # The GC lease spans the whole interval and a fresh owner id never extends it, so the
        # GC runs once per interval cluster-wide, even for short-lived managers or owner changes.
        owner = f"{self.owner_id[:200]}:{uuid.uuid4().hex}"
        if self.task_manager.try_acquire_lease(GC_LEASE_NAME, owner, self.intervals.gc_subtasks):
            gc_subtask_history(self.task_manager, self.intervals.subtask_keep_seconds)
            keep = self.intervals.history_keep_seconds
            if keep is not None:
                purged = purge_history(self.task_manager, timedelta(seconds=keep))
                if purged.tasks:
                    logger.info(
                        "history retention: purged %d finished tasks (%d subtasks)", purged.tasks, purged.subtasks
                    )

    def _maintain_nodes(self) -> None:
        self.node_manager.maintain_live_nodes(self.intervals.node_ttl, self.intervals.node_lost_grace)

    def _ranked_schedulers(self) -> list[Scheduler]:
        entries = sorted(self._schedulers.values(), key=lambda e: e.scheduler.get_task().rank_key())
        return [e.scheduler for e in entries]

    def waiting_reasons(self) -> dict[int, str]:
        """Why each task that wants slots has none, as of the last pass (for inspection and tests)."""
        return dict(self._waiting)

    def task_limit(self) -> int:
        """How many tasks may hold slots at once: DXF's fixed 16, or one per live slot when more."""
        return max(self.intervals.max_concurrent_tasks, self.slot_manager.capacity())

    def _schedule_tasks(self) -> None:
        nodes = self.node_manager.get_nodes()
        # The batched reads come first so the usage read after them is newer than every count.
        prefetched = self._prefetch()
        used, used_fresh = self._used_slots()
        self.slot_manager.update(nodes, used, fresh=used_fresh)
        self._start_candidates(nodes)
        if self._run_schedulers(self._ranked_schedulers(), prefetched):
            # Tasks finished: their slots go to waiting tasks in this pass, not one pass later.
            before = set(self._schedulers)
            self._start_candidates(nodes)
            fresh = [e for task_id, e in self._schedulers.items() if task_id not in before]
            fresh.sort(key=lambda e: e.scheduler.get_task().rank_key())
            self._run_schedulers([e.scheduler for e in fresh], None)

    def _start_candidates(self, nodes: Sequence[ManagedNode]) -> None:
        """Give schedulers to the top tasks that need one, reserving slots where they can run."""
        tm = self.task_manager
        limit = self.task_limit()
        allocated = sum(1 for e in self._schedulers.values() if e.allocated)
        # Look past the tasks that could not be placed last pass, so that tasks no node can run
        # (or whose nodes are full) do not hide lower-ranked tasks that could run elsewhere.
        window = 2 * limit + min(2 * self._unplaceable, MAX_WAITING_LOOKAHEAD)
        # When saturated, still serve the states that need no slots (cancel, pause, revert, modify).
        saturated = allocated >= limit
        tasks = tm.get_top_no_need_resource_tasks(window) if saturated else tm.get_top_unfinished_tasks(window)
        waiting: dict[int, str] = {}
        nowhere_from, nowhere_reason, unplaceable = math.inf, "", 0
        if saturated:  # the tasks that waited still wait, now for the limit
            full = f"{allocated} tasks hold slots, the most at once for {limit} live slots"
            waiting = {t: full for t in self._waiting if t not in self._schedulers}
        for base in tasks:
            if base.id in self._schedulers:
                continue
            factory = get_scheduler_factory(base.type)
            if factory is None:
                err = UnknownTaskTypeError(
                    f"unknown task type {base.type!r}: register a scheduler factory for it "
                    f"(register_scheduler_factory) in the process that runs the scheduler"
                )
                logger.warning("task %d: %s", base.id, err)
                tm.fail(base.id, base.state, err)
                self._cleanup_due = True
                continue
            if base.state not in _RESOURCE_STATES:
                self._unpark(base.id)
                self._start_scheduler(base, factory)
                continue
            if allocated >= limit:
                waiting[base.id] = f"{allocated} tasks hold slots, the most at once for {limit} live slots"
                continue
            # Cheap first: a task that fits on no live node at all needs no scheduler to say so;
            # once a task of concurrency c fits nowhere, no lower-ranked one of c or more does.
            if base.concurrency >= nowhere_from:
                waiting[base.id] = nowhere_reason
                continue
            first = self.slot_manager.check(base)
            if not first.ok:
                waiting[base.id] = nowhere_reason = first.reason
                nowhere_from = base.concurrency
                continue
            sched = self._parked_or_new(base, factory)
            if sched is None:
                continue
            eligible = self._eligible(sched, base, nodes)
            where = self.slot_manager.check(base, eligible)
            if not where.ok:
                self._parked[base.id] = _Parked(base, sched)
                waiting[base.id] = where.reason
                unplaceable += 1
                continue
            self._parked.pop(base.id, None)
            self.slot_manager.reserve(base, where.exec_id, eligible)
            self._schedulers[base.id] = _Entry(sched, base, where.exec_id, True)
            allocated += 1
        for task_id in [t for t in self._parked if t not in waiting]:
            self._unpark(task_id)
        self._waiting = waiting
        if not saturated:
            self._unplaceable = unplaceable

    def _run_schedulers(self, schedulers: Sequence[Scheduler], prefetched: _Prefetched | None) -> bool:
        """One ``schedule_task`` each, in rank order; True when a scheduler was dropped."""
        dropped = False
        for sched in schedulers:
            task_id = sched.get_task().id
            writes = getattr(sched, "writes", 0)
            hand_over = getattr(sched, "prefetch", None)
            if prefetched is not None and hand_over is not None and task_id in prefetched[0]:
                fresh = prefetched[1].get(task_id)
                hand_over(fresh, prefetched[2].get(task_id) if fresh is not None else None)
            try:
                keep = sched.schedule_task()
            except DXFError as err:
                logger.warning("task %d: scheduling failed, retrying next pass: %s", task_id, err)
                keep = True
            except Exception:
                logger.exception("task %d: scheduling failed, retrying next pass", task_id)
                keep = True
            if getattr(sched, "writes", 0) != writes:
                self.last_pass_worked = True
            if not keep:
                self._drop(task_id)
                self._cleanup_due = True
                dropped = True
                self.last_pass_worked = True
        if self.step_switches.flush():
            self.last_pass_worked = True
        return dropped

    def _used_slots(self) -> tuple[dict[str, int] | None, bool]:
        """Slots in use per node and whether they are fresh, or None to reuse the last read.

        Reservations may use a read up to one balance interval old (subtasks that ended since
        only make it cautious, and plans are counted in as they happen); any plan reads it
        fresh first. The last balancing round's load aggregate (one pass old) serves as that
        read when there is one, so a steady pass over many live subtasks reads no aggregate
        of its own.
        """
        now = time.monotonic()
        load, self.balancer.last_load = self.balancer.last_load, None
        if load is not None:
            self._used_read_at = now
            return used_slots(load), False
        if now - self._used_read_at < self.intervals.balance:
            return None, False
        self._used_read_at = now
        return self.task_manager.get_used_slots_on_nodes(), True

    def _prefetch(self) -> _Prefetched | None:
        """The bases and current-step counts of every scheduled task, in two statements."""
        ids = list(self._schedulers)
        if not ids:
            return None
        tm = self.task_manager
        try:
            bases = tm.get_task_bases_by_ids(ids)
            counts = tm.get_step_counts({i: b.step for i, b in bases.items()})
        except DXFError as err:
            logger.warning("scheduler %s: batched task reads failed, reading per task: %s", self.owner_id, err)
            return None
        return set(ids), bases, counts

    def _eligible(self, sched: Scheduler, base: TaskBase, nodes: Sequence[ManagedNode]) -> list[str]:
        """Live nodes the task may use, as its scheduler plans (type's choice, else its scope)."""
        live = {n.id for n in nodes}
        fn = getattr(sched, "eligible_exec_ids", None)
        try:
            ids = fn() if fn is not None else [n.id for n in filter_by_scope(nodes, base.target_scope)]
        except Exception:
            logger.exception("task %d: get_eligible_instances failed; it waits", base.id)
            return []
        return [n for n in ids if n in live]

    def _parked_or_new(self, base: TaskBase, factory: SchedulerFactory) -> Scheduler | None:
        parked = self._parked.pop(base.id, None)
        if parked is not None:
            if parked.base == base:
                return parked.scheduler
            _close(base.id, parked.scheduler)
        return self._new_scheduler(base, factory, allocated=True)

    def _unpark(self, task_id: int) -> None:
        parked = self._parked.pop(task_id, None)
        if parked is not None:
            _close(task_id, parked.scheduler)

    def _new_scheduler(self, base: TaskBase, factory: SchedulerFactory, *, allocated: bool) -> Scheduler | None:
        tm = self.task_manager
        try:
            task = tm.get_task_by_id(base.id)
        except TaskNotFoundError:
            return None
        ctx = self.ctx.child()
        param = Param(
            tm,
            self.node_manager,
            self.slot_manager,
            self.owner_id,
            allocated,
            self.intervals,
            self.planning,
            self.step_switches,
        )
        try:
            sched = factory(ctx, task, param)
            sched.init()
        except Exception as err:
            logger.warning("task %d: scheduler init failed, failing the task: %s", task.id, err)
            ctx.cancel()
            tm.fail(task.id, task.state, err)
            self._cleanup_due = True
            return None
        return sched

    def _start_scheduler(self, base: TaskBase, factory: SchedulerFactory) -> bool:
        """Start a scheduler for a state that needs no slots (cancel, pause, revert, modify)."""
        sched = self._new_scheduler(base, factory, allocated=False)
        if sched is None:
            return False
        self._schedulers[base.id] = _Entry(sched, base, "", False)
        return True

    def _drop(self, task_id: int) -> None:
        entry = self._schedulers.pop(task_id, None)
        if entry is None:
            return
        if entry.allocated:
            self.slot_manager.unreserve(entry.reserved, entry.exec_id)
        _close(task_id, entry.scheduler)

    def _drop_all(self) -> None:
        for task_id in list(self._schedulers):
            self._drop(task_id)
        for task_id in list(self._parked):
            self._unpark(task_id)
        self._waiting = {}


def _close(task_id: int, sched: Scheduler) -> None:
    try:
        sched.close()
    except Exception:
        logger.exception("task %d: scheduler close failed", task_id)
