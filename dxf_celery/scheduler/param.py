"""Tunables of the scheduler, and what a per-task scheduler receives from its manager."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dxf_celery.proto import MAX_CONCURRENT_TASKS
from dxf_celery.scheduler.planning import (
    DEFAULT_PLANNING_MAX_RETRIES,
    DEFAULT_PLANNING_RETRY_MAX_INTERVAL,
    PlanningRetries,
)

if TYPE_CHECKING:
    from dxf_celery.scheduler.nodes import NodeManager
    from dxf_celery.scheduler.slots import SlotManager
    from dxf_celery.scheduler.switches import StepSwitches
    from dxf_celery.storage import TaskManager

#: A step whose subtask metas add up to at least this many bytes is inserted in several
#: transactions (DXF: 80% of the transaction size limit).
DEFAULT_BATCH_SWITCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SchedulerIntervals:
    """Seconds between the scheduler's periodic jobs (DXF's defaults).

    ``schedule`` paces the thread loop; the other jobs run on the first pass after their
    interval elapsed, so they are never more frequent than the passes themselves.
    """

    #: One full pass (state machines, nodes, balancer, cleanup) every this many seconds.
    schedule: float = 0.5
    #: Rebalance subtasks over live nodes.
    balance: float = 1.5
    #: A node whose heartbeat is older than this is suspect: no new work, its pending subtasks move.
    node_ttl: float = 10.0
    #: A suspect node silent this much longer is lost: deleted, its running subtasks move too
    #: (a non-idempotent one then reverts its task). Covers frozen VMs and long pauses.
    node_lost_grace: float = 60.0
    #: Move finished tasks to history (also on the pass after a task finishes).
    cleanup: float = 600.0
    #: Delete old subtask history.
    gc_subtasks: float = 86400.0
    #: Subtask history rows older than this are deleted (DXF: 14 days).
    subtask_keep_seconds: float = 14 * 86400.0
    #: Finished tasks older than this leave the history with their subtasks (None: kept forever).
    history_keep_seconds: float | None = None
    #: At least this many tasks may hold slots at once (DXF: 16); more when the live nodes have
    #: more slots in all, since every slot-holding task reserves at least one slot.
    max_concurrent_tasks: int = MAX_CONCURRENT_TASKS
    #: Plans with this many meta bytes or more are inserted in batches.
    batch_switch_bytes: int = DEFAULT_BATCH_SWITCH_BYTES
    #: A retryable planning error is retried this many times in a row, then the task reverts.
    planning_max_retries: int = DEFAULT_PLANNING_MAX_RETRIES
    #: Cap of the pause between planning attempts (it starts at ``schedule`` and doubles).
    planning_retry_max_interval: float = DEFAULT_PLANNING_RETRY_MAX_INTERVAL

    @classmethod
    def fast(cls) -> SchedulerIntervals:
        """Short intervals for tests and local clusters: everything happens within a second."""
        return cls(schedule=0.05, balance=0.1, node_ttl=1.0, node_lost_grace=1.0, cleanup=0.5)


@dataclass
class Param:
    """What the manager hands every per-task scheduler it creates."""

    task_manager: TaskManager
    node_manager: NodeManager
    slot_manager: SlotManager
    #: The owner id of the scheduler manager (for logs).
    server_id: str
    #: False for schedulers started for a no-resource state (cancelling, pausing, ...):
    #: such a scheduler exits when the task returns to a state that needs slots.
    allocated_slots: bool
    intervals: SchedulerIntervals
    #: Retryable planning failures, kept by the manager across scheduler restarts.
    planning: PlanningRetries = field(default_factory=PlanningRetries)
    #: The pass's queue of small step switches (written together after the pass's schedulers
    #: ran); None writes each at once.
    step_switches: StepSwitches | None = None
