"""How one ``dxf.execute`` ended, in DXF terms and as the Celery state Flower shows.

The executor's loop knows why it returned (:mod:`dxf_celery.taskexecutor.outcome`); the
task's state read right after the run knows what that return meant (a cancelled Context is
a pause, a preemption or a revert depending on it). :func:`classify` joins the two into the
``ended`` word of the executor's result; :func:`finish` ends the Celery task with it:

* ``finished`` (the task succeeded), ``idle`` (this node has no more subtasks of a task that
  goes on) and ``skipped`` (a stale message, nothing to run): ``SUCCESS``, the result is the
  outcome dict;
* anything else (``paused``, ``cancelled``, ``reverted``, ``preempted``, ``moved``, ...): a
  custom state named after it (``PAUSED``, ...), stored in the result backend with the
  outcome as its meta and sent as a ``task-<ended>`` event (Flower turns an unknown
  ``task-*`` event into that state), then :class:`celery.exceptions.Ignore` so the worker
  neither stores nor announces a ``SUCCESS`` over it. docs/flower.md says why.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Ignore
from celery.utils.saferepr import saferepr

from dxf_celery.proto import TaskState
from dxf_celery.taskexecutor import outcome as out

logger = logging.getLogger(__name__)

FINISHED = "finished"
IDLE = "idle"
SKIPPED = "skipped"
PAUSED = "paused"
CANCELLED = "cancelled"
REVERTED = "reverted"
PREEMPTED = "preempted"
SHUTDOWN = "shutdown"
MOVED = "moved"
NO_ROOM = "no_room"
CRASHED = "crashed"
NOT_BUILT = "not_built"
GONE = "gone"

#: Ends that are the executor's work done: Celery ``SUCCESS``. Every other end is a custom state.
SUCCESS_ENDS = frozenset({FINISHED, IDLE, SKIPPED})

_REVERT_STATES = frozenset(
    {TaskState.REVERTING, TaskState.REVERTED, TaskState.FAILED, TaskState.AWAITING_RESOLUTION, TaskState.CANCELLING}
)


def celery_state(ended: str) -> str:
    """The Celery state of an executor that ended so: ``SUCCESS`` or the end in capitals."""
    return "SUCCESS" if ended in SUCCESS_ENDS else ended.upper()


def _state_of(value: str) -> TaskState | None:
    try:
        return TaskState(value)
    except ValueError:
        return None


def _by_task_state(state: TaskState, cancelled_by_user: bool) -> str | None:
    """The end a task state explains on its own (None: the task still runs)."""
    if state == TaskState.SUCCEED:
        return FINISHED
    if state in (TaskState.PAUSING, TaskState.PAUSED):
        return PAUSED
    if state == TaskState.CANCELLING or (state in _REVERT_STATES and cancelled_by_user):
        return CANCELLED
    if state in _REVERT_STATES:
        return REVERTED
    return None


def classify(
    *,
    built: bool,
    loop_reason: str,
    loop_detail: str,
    moved: int,
    task_state: TaskState | None,
    cancelled_by_user: bool = False,
    shutting_down: bool = False,
) -> str:
    """Why an executor run ended, from its loop's reason and the task's state after it.

    ``task_state`` is None when the task is in neither the live table nor history. The state
    the loop itself saw (``loop_reason == task_state``) wins over the later read, which may
    already be past it (paused, then resumed). A task state that explains the end wins over
    a crash: a crashed loop fails a subtask, so its task reverts, and "reverted" is what
    happened to the task (the crash is in the worker's log).
    """
    if task_state is None:
        return GONE
    seen = _state_of(loop_detail) if loop_reason == out.LOOP_TASK_STATE else None
    for state in (seen, task_state):
        if state is not None:
            explained = _by_task_state(state, cancelled_by_user)
            if explained is not None:
                return explained
    if not built:
        return NOT_BUILT
    if loop_reason == out.LOOP_CRASHED:
        return CRASHED
    if loop_reason == out.LOOP_NO_ROOM:
        return NO_ROOM
    if loop_reason in (out.LOOP_CANCELLED, out.LOOP_DRAINED):
        return SHUTDOWN if shutting_down else PREEMPTED
    if moved:
        return MOVED
    return IDLE


def backend_configured(app: Any) -> bool:
    """True when the app has a result backend (``update_state`` would store something)."""
    from celery.backends.base import DisabledBackend

    try:
        return not isinstance(app.backend, DisabledBackend)
    except Exception as err:  # a misconfigured backend must not break executors
        logger.debug("no result backend: %s", err)
        return False


def is_success(result: dict[str, Any]) -> bool:
    """True when the executor's result ends it as a Celery ``SUCCESS`` (a result without ``ended`` too)."""
    ended = str(result.get("ended", ""))
    return not ended or ended in SUCCESS_ENDS


def announce(task: Any, result: dict[str, Any], *, events: bool, runtime: float) -> None:
    """Store and send the custom end state of ``result`` for the bound ``dxf.execute`` ``task`` (nothing for a success).

    Called while the executor's :class:`ExecutionControl` still owns SIGUSR1 (see
    :func:`dxf_celery.worker.tasks.run_execute`); :func:`finish` then raises ``Ignore``.
    """
    if is_success(result):
        return
    ended = str(result["ended"])
    state = celery_state(ended)
    if backend_configured(task.app):
        try:
            task.update_state(state=state, meta=result)
        except Exception as err:
            logger.warning("task %s: cannot store the %s state: %s", result.get("task"), state, err)
    if events:
        try:
            task.send_event(
                f"task-{ended}",
                result=saferepr(result),
                runtime=runtime,
                dxf_task_id=result.get("task"),
                dxf_ended=ended,
            )
        except Exception as err:
            logger.debug("task %s: cannot send the task-%s event: %s", result.get("task"), ended, err)


def finish(result: dict[str, Any]) -> dict[str, Any]:
    """Return ``result`` as the task's ``SUCCESS`` value, or raise ``Ignore`` after :func:`announce` told the end."""
    if is_success(result):
        return result
    raise Ignore(f"DXF executor ended {result['ended']}")
