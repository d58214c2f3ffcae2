"""The client API: submit tasks, watch them, and steer them (cancel, pause, resume, modify).

Every function takes the :class:`~dxf_celery.storage.TaskManager` first;
:class:`~dxf_celery.client.TaskClient` (the base of ``DXF``, ``LocalCluster`` and ``DXFFlask``)
calls them with its own. They only write the requested state; the scheduler notices on its
next pass and does the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dxf_celery.errors import (
    InvalidTaskError,
    StorageUnavailableError,
    TaskChangedError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStateNotAllowedError,
)
from dxf_celery.proto import (
    DEFAULT_LIST_LIMIT,
    EMPTY_META,
    NORMAL_PRIORITY,
    ExtraParams,
    ManagedNode,
    Modification,
    ModificationType,
    ModifyParam,
    Subtask,
    SubtaskState,
    Task,
    TaskState,
)
from dxf_celery.retry import run_with_retry
from dxf_celery.transitions import MODIFIABLE_TASK_STATES

if TYPE_CHECKING:
    from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)

#: How often :func:`wait_task` polls (DXF: 300 ms).
WAIT_POLL_INTERVAL = 0.3

_WAIT_END_STATES = frozenset({TaskState.SUCCEED, TaskState.REVERTED, TaskState.FAILED, TaskState.PAUSED})


def submit_task(
    tm: TaskManager,
    key: str,
    task_type: str,
    *,
    meta: bytes = EMPTY_META,
    concurrency: int = 1,
    priority: int = NORMAL_PRIORITY,
    target_scope: str = "",
    max_node_count: int = 0,
    extra_params: ExtraParams | None = None,
) -> Task:
    """Create a pending task and return it.

    A key already used, live or in history, raises :class:`TaskAlreadyExistsError`; text that
    cannot be stored (a lone surrogate) raises :class:`InvalidTaskError`. The task type is not
    checked against this process (the submitting process need not import it); when every live
    node reported its types and none registered this one, the task is accepted with a warning
    (see :func:`waiting_reason`), and the scheduler fails a task whose type it does not know.
    """
    _check_text("task key", key)
    _check_text("task type", task_type)
    _check_text("target_scope", target_scope)
    created = tm.submit_new_task(
        key,
        task_type,
        concurrency,
        target_scope=target_scope,
        max_node_count=max_node_count,
        extra_params=extra_params,
        meta=meta,
        priority=priority,
    )
    task = created.task
    reason = reason_to_wait(task, created.nodes)  # the nodes as the insert's transaction saw them
    if reason is not None:
        logger.warning("task %d (%s) accepted, but %s", task.id, task.key, reason)
    return task


def waiting_reason(tm: TaskManager, task: Task, *, check_slots: bool = True) -> str | None:
    """Why a pending task cannot start yet for lack of a node, or None when some node can run it.

    The task-type reason needs every node that may run the task to have reported its types
    (a node of an older version reports none): a guess would warn about working setups.
    ``check_slots`` also reports nodes too busy to take it (one aggregate over the live
    subtasks; submit skips it).
    """
    from dxf_celery.scheduler.waiting import slot_wait_reason  # see reason_to_wait

    if task.state != TaskState.PENDING:
        return None
    nodes = tm.get_all_nodes()
    reason = reason_to_wait(task, nodes)
    if reason is None and check_slots:
        return slot_wait_reason(tm, task, nodes)
    return reason


def reason_to_wait(task: Task, nodes: Sequence[ManagedNode]) -> str | None:
    """The node-table part of :func:`waiting_reason`, for rows already read (submit reads them
    in its own transaction); slots are not looked at."""
    # The scheduler's own rules, imported here: importing handle stays light (the
    # scheduler package loads SQLAlchemy).
    from dxf_celery.scheduler.nodes import filter_by_scope

    if task.state != TaskState.PENDING:
        return None
    if not nodes:
        return "no worker node is registered: it waits until one starts"
    if task.target_scope and all(n.role != task.target_scope for n in nodes):
        return f"no node has the role {task.target_scope!r} (its target scope): it waits until one joins"
    eligible = filter_by_scope(nodes, task.target_scope)
    known = [n.task_types for n in eligible if n.task_types is not None]
    if eligible and len(known) == len(eligible) and all(task.type not in types for types in known):
        among = "" if len(eligible) == len(nodes) else f" that may run it (role {eligible[0].role!r})"
        return (
            f"no live worker{among} registered the task type {task.type!r}: start workers that import the "
            f"module registering it (a scheduler pass on a worker that does not know the type fails the task)"
        )
    return None


def _check_text(what: str, value: object) -> None:
    """Refuse a string the database drivers cannot encode (a lone surrogate, e.g. from a bad argv byte)."""
    if not isinstance(value, str):
        return  # the storage layer names the wrong type
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidTaskError(
            f"{what} {value!r:.80} is not valid text: {value[err.start]!r} at position {err.start} "
            f"is a lone surrogate, which cannot be stored; pass UTF-8 text"
        ) from None


def get_task(tm: TaskManager, key_or_id: str | int) -> Task:
    """The task by id (int) or key (str), live or in history; :class:`TaskNotFoundError` if none."""
    if isinstance(key_or_id, bool) or not isinstance(key_or_id, (int, str)):
        raise InvalidTaskError(f"pass a task id (int) or key (str), got {type(key_or_id).__name__}")
    if isinstance(key_or_id, int):
        try:
            return tm.get_task_by_id_with_history(key_or_id)
        except TaskNotFoundError:
            raise TaskNotFoundError(f"no task with id {key_or_id}") from None
    _check_text("task key", key_or_id)
    try:
        return tm.get_task_by_key_with_history(key_or_id)
    except TaskNotFoundError:
        raise TaskNotFoundError(f"no task with key {key_or_id!r}") from None


def wait_task(
    tm: TaskManager,
    task_id: int,
    timeout: float | None = None,
    raise_error: bool = True,
    poll_interval: float | None = None,
) -> Task:
    """Poll until the task is succeed, reverted, failed or paused and return it.

    With ``raise_error`` a failed or reverted task raises :class:`TaskFailedError` (carrying
    the task and its stored error). Past ``timeout`` seconds raises :class:`TimeoutError`.
    An unreachable database while polling is logged and polling goes on, as in DXF.
    ``poll_interval`` defaults to :data:`WAIT_POLL_INTERVAL`.
    """
    if poll_interval is None:
        poll_interval = WAIT_POLL_INTERVAL
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            task = tm.get_task_by_id_with_history(task_id)
        except TaskNotFoundError:
            raise TaskNotFoundError(f"no task with id {task_id}") from None
        except StorageUnavailableError as err:  # the database may be restarting: keep polling
            logger.warning("waiting for task %d: %s", task_id, err)
            task = None
        if task is not None and task.state in _WAIT_END_STATES:
            if raise_error and task.state in (TaskState.FAILED, TaskState.REVERTED):
                raise TaskFailedError(task)
            return task
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                state = task.state.value if task is not None else "unknown"
                raise TimeoutError(f"task {task_id} still {state} after {timeout}s")
            time.sleep(min(poll_interval, left))
        else:
            time.sleep(poll_interval)


def _live_task(tm: TaskManager, key_or_id: str | int) -> Task | None:
    try:
        return get_task(tm, key_or_id)
    except TaskNotFoundError:
        return None


def cancel_task(tm: TaskManager, key_or_id: str | int) -> bool:
    """Ask to cancel; True when the task was pending, running or awaiting resolution.

    The scheduler reverts it and it ends ``reverted`` with the error "cancelled by user".
    """
    task = _live_task(tm, key_or_id)
    return task is not None and tm.request_cancel(task.id)


def pause_task(tm: TaskManager, key_or_id: str | int) -> bool:
    """Ask to pause; True when the task was pending or running. Subtasks stop, none is lost."""
    task = _live_task(tm, key_or_id)
    return task is not None and tm.request_pause(task.id)


def resume_task(tm: TaskManager, key_or_id: str | int) -> bool:
    """Resume a paused task; True when it was paused."""
    task = _live_task(tm, key_or_id)
    return task is not None and tm.request_resume(task.id)


def resolve_task(tm: TaskManager, key_or_id: str | int) -> bool:
    """Manual recovery of an ``awaiting-resolution`` task: rerun its failed subtasks.

    Fix the cause first (the stored error says what failed); returns False when the task is
    not awaiting resolution.
    """
    task = _live_task(tm, key_or_id)
    return task is not None and tm.resolve(task.id)


def modify_task(
    tm: TaskManager,
    task_id: int,
    *,
    concurrency: int | None = None,
    max_node_count: int | None = None,
    modifications: Sequence[Modification] = (),
) -> None:
    """Change a pending, running or paused task's concurrency, node limit or app settings.

    The scheduler applies it on its next pass and returns the task to its state; running
    executors pick up the new values.
    """
    mods: list[Modification] = []
    if concurrency is not None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidTaskError(f"concurrency must be an int >= 1 (slots per node), got {concurrency!r}")
        cpu = tm.get_cpu_count_of_node()
        if cpu is not None and concurrency > cpu:
            raise InvalidTaskError(
                f"concurrency {concurrency} is larger than the CPU slots ({cpu}) of the registered nodes; "
                f"use at most {cpu} or give the nodes more slots"
            )
        mods.append(Modification(ModificationType.CONCURRENCY.value, concurrency))
    if max_node_count is not None:
        if isinstance(max_node_count, bool) or not isinstance(max_node_count, int) or max_node_count < 0:
            raise InvalidTaskError(
                f"max_node_count must be an int >= 0 when modifying (0 removes the limit), got {max_node_count!r}"
            )
        mods.append(Modification(ModificationType.MAX_NODE_COUNT.value, max_node_count))
    for mod in modifications:
        if not isinstance(mod, Modification):
            raise InvalidTaskError(f"modifications must be dxf_celery.proto.Modification, got {type(mod).__name__}")
        mods.append(mod)
    if not mods:
        raise InvalidTaskError("nothing to modify: pass concurrency, max_node_count or modifications")
    for attempt in range(3):
        try:
            task = tm.get_task_base_by_id(task_id)
        except TaskNotFoundError:
            raise TaskNotFoundError(f"no live task with id {task_id}; finished tasks cannot be modified") from None
        if task.state not in MODIFIABLE_TASK_STATES:
            raise TaskStateNotAllowedError(
                f"task {task_id} is {task.state.value}; only "
                f"{', '.join(s.value for s in MODIFIABLE_TASK_STATES)} tasks can be modified "
                f"(wait for a pending modification to be applied, or resume the task)"
            )
        try:
            tm.modify_task_by_id(task_id, ModifyParam(task.state, tuple(mods)))
            return
        except TaskChangedError:
            if attempt == 2:
                raise


def list_tasks(
    tm: TaskManager, states: Sequence[TaskState | str] | None = None, limit: int = DEFAULT_LIST_LIMIT
) -> list[Task]:
    """Tasks, live first then history, in rank order, optionally only in ``states``."""
    return tm.list_tasks(states, limit=limit)


def get_subtasks(tm: TaskManager, task_id: int, step: int | None = None) -> list[Subtask]:
    """Subtasks of a task (live and history), ordered by step and ordinal."""
    return tm.get_subtasks(task_id, step)


@dataclass
class StepProgress:
    """Subtask counts by state and summed summaries of one step."""

    step: int
    counts: dict[SubtaskState, int] = field(default_factory=dict)
    row_count: int = 0
    bytes: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return self.counts.get(SubtaskState.SUCCEED, 0)


@dataclass
class TaskProgress:
    """Where a task stands: the task row plus one :class:`StepProgress` per planned step."""

    task: Task
    steps: dict[int, StepProgress] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.task.id,
            "key": self.task.key,
            "state": self.task.state.value,
            "step": self.task.step,
            "steps": {
                step: {
                    "counts": {s.value: n for s, n in p.counts.items()},
                    "row_count": p.row_count,
                    "bytes": p.bytes,
                }
                for step, p in sorted(self.steps.items())
            },
        }


def get_task_progress(tm: TaskManager, task_id: int) -> TaskProgress:
    """Counts per step and state, and summed ``row_count``/``bytes`` of the subtask summaries."""
    task = get_task(tm, task_id)
    progress = TaskProgress(task)
    for step, counts in tm.get_subtask_counts_by_step(task_id).items():
        sp = StepProgress(step, dict(counts))
        sp.row_count, sp.bytes = summed_summaries(tm, task_id, step)
        progress.steps[step] = sp
    return progress


def summed_summaries(tm: TaskManager, task_id: int, step: int) -> tuple[int, int]:
    """Summed ``row_count`` and ``bytes`` of the subtask summaries of one step."""
    rows = size = 0
    for summary in tm.get_subtask_summaries(task_id, step):
        rows += _int(summary.get("row_count"))
        size += _int(summary.get("bytes"))
    return rows, size


def _int(value: object) -> int:
    if isinstance(value, (int, float, str)):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


__all__ = [
    "DEFAULT_LIST_LIMIT",
    "WAIT_POLL_INTERVAL",
    "StepProgress",
    "TaskProgress",
    "cancel_task",
    "get_subtasks",
    "get_task",
    "get_task_progress",
    "list_tasks",
    "modify_task",
    "pause_task",
    "resolve_task",
    "resume_task",
    "run_with_retry",
    "submit_task",
    "summed_summaries",
    "wait_task",
    "waiting_reason",
]
