"""The Celery tasks DXF registers: ``dxf.execute`` (one task executor) and ``dxf.schedule``.

``dxf.execute`` runs in the node's pool (a prefork child, a pool thread, or the solo main
thread). It opens its own TaskManager (after fork), builds the executor with a private slot
manager holding only this task (the node's budget is kept by the Manager in the main
process), and runs it under an :class:`ExecutionControl` so cancel requests reach it. The
message carries ids only (JSON); every fact is read from SQL, so a stale or duplicated
message does nothing harmful.

Its result is the DXF outcome of the run (why it ended, the steps and subtasks it ran on
this node); an executor that did not simply finish its work ends in a custom Celery state
named after why (:mod:`dxf_celery.worker.outcome`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from dxf_celery.context import Context
from dxf_celery.errors import ExecutorCancelledError, TaskNotFoundError
from dxf_celery.proto import NodeResource, SubtaskState, Task, TaskState, is_cancelled_error
from dxf_celery.taskexecutor import outcome as loop_outcome
from dxf_celery.taskexecutor.interfaces import TaskExecutor
from dxf_celery.taskexecutor.launcher import run_executor
from dxf_celery.taskexecutor.param import Param
from dxf_celery.taskexecutor.slots import SlotManager
from dxf_celery.worker import outcome
from dxf_celery.worker.events import ProgressReporter
from dxf_celery.worker.execution import ExecutionControl, local_executions
from dxf_celery.worker.names import EXECUTE_TASK, SCHEDULE_TASK, STEP_DONE

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.worker.state import DXFState

logger = logging.getLogger(__name__)


def run_execute(
    state: DXFState,
    *,
    celery_id: str,
    hostname: str,
    task_id: int,
    exec_id: str,
    slots: int,
    memory: int,
    events: bool,
    incarnation: str = "",
    store_state: Callable[[str, dict[str, Any]], None] | None = None,
    on_outcome: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Body of ``dxf.execute``: run the executor of ``task_id`` for node ``exec_id``; returns its outcome.

    ``store_state`` writes a Celery state and meta to the result backend (given only when
    one is configured): the ``PROGRESS`` figures while the executor runs. ``on_outcome``
    gets the outcome before the cancel control is closed (it announces the end state).
    """
    if hostname and exec_id != hostname:
        # Each node's queue is its own; running another node's executor would impersonate it.
        logger.error("dxf.execute for node %s reached %s; ignored (is a queue shared?)", exec_id, hostname)
        return _skipped(task_id, exec_id, "other node")
    if incarnation and state.incarnation and incarnation != state.incarnation:
        # Sent by an earlier life of this node (left in its queue by a crash): this life's
        # Manager does not count it in its slots and may start its own executor for the task.
        logger.info("dxf.execute of task %d from an earlier run of %s; ignored", task_id, exec_id)
        return _skipped(task_id, exec_id, "earlier worker run")
    settings = state.settings
    tm = state.task_manager
    try:
        task = tm.get_task_by_id(task_id)
    except TaskNotFoundError:
        return _skipped(task_id, exec_id, "task is gone")
    slot_manager = SlotManager(max(slots, task.concurrency, 1))
    slot_manager.alloc(task)
    param = Param(
        tm,
        slot_manager,
        NodeResource(max(slots, 1), memory),
        exec_id,
        state.intervals(),
        on_step_drained=lambda drained: wake_if_step_done(state, drained),
    )
    in_child = state.main_pid is not None and os.getpid() != state.main_pid
    use_signal = in_child and threading.current_thread() is threading.main_thread()

    def read_state() -> TaskState:
        return tm.get_task_base_by_id(task_id).state

    control = ExecutionControl(task_id, read_state=read_state, use_signal=use_signal)
    ctx = Context.background()
    reporter: ProgressReporter | None = None
    built: list[TaskExecutor] = []
    loop_reason = ""

    def on_built(executor: TaskExecutor) -> None:
        built.append(executor)
        control.attach(executor)

    def node_subtasks() -> int:
        recorded = _recorded(built)
        return recorded.count(loop_outcome.ENDED_SUCCEED) if recorded is not None else 0

    with control:
        local_executions.register(celery_id, control)
        try:
            if not in_child:
                from celery.worker import state as worker_state

                if celery_id in worker_state.revoked:
                    control.request(None)
            send_events = events and settings.progress_events
            if send_events or store_state is not None:
                reporter = ProgressReporter(
                    state.app,
                    tm,
                    celery_id=celery_id,
                    hostname=hostname,
                    task_id=task_id,
                    interval=settings.progress_event_interval,
                    send_events=send_events,
                    store=store_state,
                    node_subtasks=node_subtasks,
                ).start()
            run_executor(ctx, task, param, on_built=on_built)
        except (ExecutorCancelledError, SoftTimeLimitExceeded) as err:
            # A forced interruption that landed outside step code: the executor already stopped.
            logger.info("task %d: executor interrupted: %s", task_id, err)
            loop_reason = loop_outcome.LOOP_CANCELLED
        finally:
            local_executions.unregister(celery_id)
            if reporter is not None:
                reporter.stop()
        # Still under the control: a cancel signal that comes late (the Manager's, for a run
        # that already ended) lands in its handler, not in the pool's soft-time-limit one,
        # which would raise in the middle of this bookkeeping or of the result's write.
        result = _outcome(state, task.id, task.key, task.type, exec_id, built, loop_reason, control.requested, in_child)
        if on_outcome is not None:
            on_outcome(result)
    return result


def _recorded(built: list[TaskExecutor]) -> loop_outcome.ExecutorOutcome | None:
    """The outcome a built executor recorded (a custom TaskExecutor may record none)."""
    recorded = getattr(built[0], "outcome", None) if built else None
    return recorded if isinstance(recorded, loop_outcome.ExecutorOutcome) else None


def _skipped(task_id: int, exec_id: str, why: str) -> dict[str, Any]:
    return {"ended": outcome.SKIPPED, "skipped": why, "task": task_id, "node": exec_id}


def _outcome(
    state: DXFState,
    task_id: int,
    key: str,
    type_: str,
    exec_id: str,
    built: list[TaskExecutor],
    loop_reason: str,
    cancel_request: str | None,
    in_child: bool,
) -> dict[str, Any]:
    """The executor's result: why it ended (its loop's reason read against the task's state now) and what it ran."""
    recorded = _recorded(built)
    counters = recorded.as_dict() if recorded is not None else loop_outcome.ExecutorOutcome().as_dict()
    reason = (recorded.loop_reason if recorded is not None else "") or loop_reason
    detail = recorded.detail if recorded is not None else ""
    if recorded is not None and not reason:
        # Its loop raised (BaseTaskExecutor logged it): interrupted when its Context is done, else crashed.
        ctx = getattr(built[0], "ctx", None)
        reason = loop_outcome.LOOP_CANCELLED if isinstance(ctx, Context) and ctx.done() else loop_outcome.LOOP_CRASHED
    task_state: TaskState | None = None
    cancelled_by_user = False
    try:
        final = state.task_manager.get_task_by_id_with_history(task_id)
        task_state = final.state
        cancelled_by_user = is_cancelled_error(final.error)
    except TaskNotFoundError:
        pass
    except Exception as err:
        logger.warning("task %d: cannot read the task after its executor: %s", task_id, err)
        task_state = TaskState.RUNNING  # unknown: judge by the executor's own reason
    shutting_down = False
    if not in_child:
        from celery.worker import state as worker_state

        shutting_down = bool(worker_state.should_stop or worker_state.should_terminate)
    ended = outcome.classify(
        built=bool(built),
        loop_reason=reason,
        loop_detail=detail,
        moved=int(counters["subtask_ends"].get(loop_outcome.ENDED_MOVED, 0)),
        task_state=task_state,
        cancelled_by_user=cancelled_by_user,
        shutting_down=shutting_down,
    )
    # Why it ended and what it ran come first: Flower's table cuts the result text short.
    return {
        "ended": ended,
        **counters,
        "task_state": task_state.value if task_state is not None else None,
        "why": detail or reason,
        "task": task_id,
        "key": key,
        "type": type_,
        "node": exec_id,
        "cancel_request": cancel_request,
    }


def wake_if_step_done(state: DXFState, task: Task) -> bool:
    """Wake the scheduler lease holder when no subtask of ``task``'s step is pending or running.

    Each executor checks after its own last finish was committed, so of two nodes finishing
    the last subtasks at once, the later check sees both done: someone always wakes it. Sent
    only to a known holder: a step's end hurries a running scheduler, it never starts one.
    """
    counts = state.task_manager.get_subtask_cnt_group_by_states(task.id, task.step)
    if counts.get(SubtaskState.PENDING) or counts.get(SubtaskState.RUNNING):
        return False
    state.send_wakeup(STEP_DONE, holder_only=True)
    return True


def run_schedule(state: DXFState, reason: str) -> bool:
    """Body of ``dxf.schedule`` when it runs in a pool (normally the node's main process takes it)."""
    from dxf_celery.scheduler.manager import Manager

    manager = Manager(
        state.task_manager,
        owner_id=f"dxf.schedule@{os.getpid()}",
        lease_ttl=state.settings.lease_ttl,
        intervals=state.scheduler_intervals(),
    )
    try:
        return manager.schedule_once()
    finally:
        manager.release()


def register_tasks(app: Celery, state: DXFState) -> None:
    """Register ``dxf.execute`` and ``dxf.schedule`` on ``app`` (JSON only; results only where a backend is set)."""

    @app.task(
        name=EXECUTE_TASK,
        bind=True,
        ignore_result=True,
        acks_late=False,
        serializer="json",
        max_retries=0,
        Request="dxf_celery.worker.request:ExecuteRequest",
        shared=False,
    )
    def execute(
        self: Any,
        task_id: int,
        exec_id: str,
        slots: int = 1,
        memory: int = 0,
        events: bool = False,
        incarnation: str = "",
    ) -> dict[str, Any]:
        celery_id = str(self.request.id)
        store_state: Callable[[str, dict[str, Any]], None] | None = None
        if outcome.backend_configured(self.app):
            backend = self.app.backend

            def store_state(celery_state: str, meta: dict[str, Any]) -> None:
                backend.store_result(celery_id, meta, celery_state)

        started = time.monotonic()
        events_on = bool(events)

        def announce(result: dict[str, Any]) -> None:
            outcome.announce(self, result, events=events_on, runtime=time.monotonic() - started)

        result = run_execute(
            state,
            celery_id=celery_id,
            hostname=str(self.request.hostname or ""),
            task_id=int(task_id),
            exec_id=str(exec_id),
            slots=int(slots),
            memory=int(memory),
            events=events_on,
            incarnation=str(incarnation),
            store_state=store_state,
            on_outcome=announce,
        )
        return outcome.finish(result)

    @app.task(
        name=SCHEDULE_TASK,
        ignore_result=True,
        serializer="json",
        shared=False,
    )
    def schedule(reason: str = "beat") -> bool:
        return run_schedule(state, reason)
