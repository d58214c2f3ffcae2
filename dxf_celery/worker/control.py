"""Remote-control commands: ``celery -A proj control dxf_cancel <task_id>``, ``dxf_wake``, ``inspect dxf_node``.

They run on the worker main process's event loop, so each does O(1) work: a lookup and a
flag (the heavy lifting happens in the node's threads or the executor's process).
Registration is process-global (Celery's ``Panel``), which is harmless: a worker without
DXF answers that it has no DXF node.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, inspect_command

from dxf_celery.worker.node import find_runtime


def _runtime(state: Any) -> Any:
    return find_runtime(getattr(state.consumer, "hostname", ""))


@control_command(
    args=[("task_id", int), ("subtask_only", bool)],
    signature="<task_id> [subtask_only=False]",
)
def dxf_cancel(state: Any, task_id: int, subtask_only: bool = False) -> dict[str, str]:
    """Cancel this node's executor of ``task_id`` (or only its running subtask)."""
    runtime = _runtime(state)
    if runtime is None:
        return {"error": "no DXF node on this worker"}
    running = runtime.manager.running_executor(int(task_id))
    if running is None:
        return {"ok": f"no executor of task {task_id} here"}
    if subtask_only:
        running.cancel_running_subtask()
    else:
        running.cancel()
    return {"ok": f"cancel sent to the executor of task {task_id}"}


@control_command()
def dxf_wake(state: Any) -> dict[str, str]:
    """Run a node check pass now (sent after a scheduler pass triggered by a user action)."""
    runtime = _runtime(state)
    if runtime is None:
        return {"error": "no DXF node on this worker"}
    runtime.wake()
    return {"ok": "woken"}


@inspect_command()
def dxf_node(state: Any) -> dict[str, Any]:
    """This node's DXF view: slots, running executors, whether it holds the scheduler lease."""
    runtime = _runtime(state)
    if runtime is None:
        return {"error": "no DXF node on this worker"}
    result: dict[str, Any] = runtime.describe()
    return result
