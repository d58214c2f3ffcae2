"""The Celery tasks DXF registers: ``dxf.execute`` (one task executor) and ``dxf.schedule``.

``dxf.execute`` runs in the node's pool (a prefork child, a pool thread, or the solo main
thread). It opens its own TaskManager (after fork), builds the executor with a private slot
manager holding only this task (the node's budget is kept by the Manager in the main
process), and runs it under an :class:`ExecutionControl` so cancel requests reach it. The
message carries ids only (JSON); every fact is read from SQL, so a stale or duplicated
message does nothing harmful.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from dxf_celery.context import Context
from dxf_celery.errors import ExecutorCancelledError, TaskNotFoundError
from dxf_celery.proto import NodeResource, SubtaskState, Task, TaskState
from dxf_celery.taskexecutor.launcher import run_executor
from dxf_celery.taskexecutor.param import Param
from dxf_celery.taskexecutor.slots import SlotManager
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
) -> dict[str, Any]:
    """Body of ``dxf.execute``: run the executor of ``task_id`` for node ``exec_id``."""
    if hostname and exec_id != hostname:
        # Each node's queue is its own; running another node's executor would impersonate it.
        logger.error("dxf.execute for node %s reached %s; ignored (is a queue shared?)", exec_id, hostname)
        return {"task": task_id, "skipped": "other node"}
    if incarnation and state.incarnation and incarnation != state.incarnation:
        # Sent by an earlier life of this node (left in its queue by a crash): this life's
        # Manager does not count it in its slots and may start its own executor for the task.
        logger.info("dxf.execute of task %d from an earlier run of %s; ignored", task_id, exec_id)
        return {"task": task_id, "skipped": "earlier worker run"}
    settings = state.settings
    tm = state.task_manager
    try:
        task = tm.get_task_by_id(task_id)
    except TaskNotFoundError:
        return {"task": task_id, "skipped": "task is gone"}
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
    with control:
        local_executions.register(celery_id, control)
        try:
            if not in_child:
                from celery.worker import state as worker_state

                if celery_id in worker_state.revoked:
                    control.request(None)
            if events and settings.progress_events:
                reporter = ProgressReporter(
                    state.app,
                    tm,
                    celery_id=celery_id,
                    hostname=hostname,
                    task_id=task_id,
                    interval=settings.progress_event_interval,
                ).start()
            if not run_executor(ctx, task, param, on_built=control.attach):
                return {"task": task_id, "step": task.step, "skipped": "executor not built"}
        except (ExecutorCancelledError, SoftTimeLimitExceeded) as err:
            # A forced interruption that landed outside step code: the executor already stopped.
            logger.info("task %d: executor interrupted: %s", task_id, err)
        finally:
            local_executions.unregister(celery_id)
            if reporter is not None:
                reporter.stop()
    return {"task": task_id, "step": task.step, "cancelled": control.requested}


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
    """Register ``dxf.execute`` and ``dxf.schedule`` on ``app`` (JSON only, no results)."""

    @app.task(  # type: ignore[call-overload, untyped-decorator, misc]
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
        return run_execute(
            state,
            celery_id=str(self.request.id),
            hostname=str(self.request.hostname or ""),
            task_id=int(task_id),
            exec_id=str(exec_id),
            slots=int(slots),
            memory=int(memory),
            events=bool(events),
            incarnation=str(incarnation),
        )

    @app.task(  # type: ignore[untyped-decorator]
        name=SCHEDULE_TASK,
        ignore_result=True,
        serializer="json",
        shared=False,
    )
    def schedule(reason: str = "beat") -> bool:
        return run_schedule(state, reason)
