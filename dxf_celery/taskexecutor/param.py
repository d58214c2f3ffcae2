"""Timing knobs of the executor side and what a task-executor factory receives.

Every interval is a field of :class:`Intervals` so tests can run the real loops with short
periods instead of sleeping through DXF's production values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dxf_celery.errors import DXFError
from dxf_celery.proto import NodeResource, Task
from dxf_celery.retry import RECOVERY_SQL_INTERVAL, RECOVERY_SQL_MAX_INTERVAL, RECOVERY_SQL_TIMES, ExponentialBackoff
from dxf_celery.taskexecutor.interfaces import TaskTable
from dxf_celery.taskexecutor.slots import SlotManager

#: How often the node Manager looks for tasks to run (seconds).
TASK_CHECK_INTERVAL = 0.3
#: First pause of an executor that found no subtask to run; it doubles up to the max.
SUBTASK_CHECK_INTERVAL = 0.3
#: Cap of the executor's polling backoff.
MAX_SUBTASK_CHECK_INTERVAL = 2.0
#: First pause of an executor that just woke the scheduler for its step's end (not DXF's: its
#: executors wait ``SUBTASK_CHECK_INTERVAL``, and hold the node's slots meanwhile).
STEP_DONE_CHECK_INTERVAL = 0.05
#: Empty polls after which an executor exits and gives its slots back (DXF: 7 + 1).
MAX_IDLE_POLLS = 8


class InvalidSettingError(DXFError, ValueError):
    """An executor-side setting (interval, slot count, task type name) is out of range."""


@dataclass(frozen=True)
class Intervals:
    """All executor-side periods, in seconds; the defaults are DXF's except the SQL retry pause."""

    task_check: float = TASK_CHECK_INTERVAL
    subtask_check: float = SUBTASK_CHECK_INTERVAL
    max_subtask_check: float = MAX_SUBTASK_CHECK_INTERVAL
    max_idle_polls: int = MAX_IDLE_POLLS
    #: First pause after the executor woke the scheduler because its step ended (the next
    #: step's subtasks, or the task's end, are one pass away); doubles up to ``subtask_check``.
    step_done_check: float = STEP_DONE_CHECK_INTERVAL
    check_balance: float = 2.0
    update_summary: float = 3.0
    detect_modify: float = 5.0
    watch_task: float = 0.3
    heartbeat: float = 1.0
    #: Seconds a subtask whose Context was cancelled gets to return before it is interrupted.
    cancel_grace: float = 1.0
    #: Seconds a draining executor (warm shutdown, preemption) lets its running subtask finish
    #: before it cancels it (0 = cancel at once, DXF's behaviour).
    drain_grace: float = 30.0
    #: Seconds without a successful database read after which an executor fences itself
    #: (re-checks ownership at once; see :mod:`.fencing`); the worker sets half the node TTL.
    fence_after: float = 5.0
    #: Seconds without database contact after which a running idempotent subtask is stopped
    #: because another node may have it: the scheduler moves running subtasks only off a *lost*
    #: node, so the worker sets ``dxf_node_ttl + dxf_node_lost_grace``.
    stop_idempotent_after: float = 10.0
    recover_meta: float = 90.0
    #: SQL retries: DXF gives up after ~14 minutes, as here, but its pause grows to 30 s; this
    #: one stays near the check intervals so an executor resumes about one interval after an outage.
    sql_retry_times: int = RECOVERY_SQL_TIMES
    sql_retry_base: float = RECOVERY_SQL_INTERVAL
    sql_retry_max: float = RECOVERY_SQL_MAX_INTERVAL

    def __post_init__(self) -> None:
        for name in (
            "task_check",
            "subtask_check",
            "max_subtask_check",
            "step_done_check",
            "check_balance",
            "update_summary",
            "detect_modify",
            "watch_task",
            "heartbeat",
            "cancel_grace",
            "fence_after",
            "stop_idempotent_after",
            "recover_meta",
            "sql_retry_base",
            "sql_retry_max",
        ):
            if getattr(self, name) <= 0:
                raise InvalidSettingError(f"Intervals.{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.drain_grace < 0:
            raise InvalidSettingError(f"Intervals.drain_grace must be >= 0 seconds, got {self.drain_grace!r}")
        if self.max_idle_polls < 1 or self.sql_retry_times < 1:
            raise InvalidSettingError("Intervals.max_idle_polls and Intervals.sql_retry_times must be >= 1")

    @classmethod
    def fast(cls) -> Intervals:
        """Short periods for tests: every loop turns within a tenth of a second."""
        return cls(
            task_check=0.02,
            subtask_check=0.02,
            max_subtask_check=0.05,
            step_done_check=0.02,
            max_idle_polls=8,
            check_balance=0.05,
            update_summary=0.05,
            detect_modify=0.05,
            watch_task=0.02,
            heartbeat=0.1,
            cancel_grace=0.2,
            drain_grace=30.0,
            fence_after=5.0,
            stop_idempotent_after=10.0,
            recover_meta=0.5,
            sql_retry_times=5,
            sql_retry_base=0.05,
            sql_retry_max=0.05,
        )

    def sql_backoff(self) -> ExponentialBackoff:
        return ExponentialBackoff(self.sql_retry_base, 2.0, self.sql_retry_max)


@dataclass
class Param:
    """What a ``FactoryFn`` receives to build a task executor."""

    task_table: TaskTable
    slot_manager: SlotManager
    node_resource: NodeResource
    exec_id: str
    intervals: Intervals = field(default_factory=Intervals)
    #: Called (with the task as last read) when this executor ran subtasks of a step and then
    #: found none left for its node: the step may be over, and the Celery side wakes the
    #: scheduler lease holder so that the next step is planned without waiting for a tick.
    on_step_drained: Callable[[Task], object] | None = None

    @classmethod
    def for_test(
        cls,
        task_table: TaskTable,
        slot_manager: SlotManager,
        node_resource: NodeResource,
        exec_id: str,
        intervals: Intervals | None = None,
    ) -> Param:
        """A Param for driving an executor directly in tests; ``Intervals.fast()`` unless given."""
        return cls(task_table, slot_manager, node_resource, exec_id, intervals or Intervals.fast())
