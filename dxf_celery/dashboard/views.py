"""The dashboard's JSON documents, built from SQL reads only (docs/dashboard.md documents them).

Each function returns plain JSON-ready dicts, so the HTTP layer only serialises and the
figures can be tested without a server. Times are ISO 8601 UTC with a ``Z``; durations and
rates are floats in seconds; a figure that cannot be known yet (an ETA before the first
subtask finished) is ``null`` rather than a guess.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dxf_celery.errors import TaskNotFoundError
from dxf_celery.proto import (
    STEP_DONE,
    STEP_INIT,
    TASK_DONE_STATES,
    Subtask,
    Task,
    TaskState,
)
from dxf_celery.storage import TaskManager
from dxf_celery.storage import dashboard_reads as reads
from dxf_celery.transitions import CANCELLABLE_TASK_STATES, MODIFIABLE_TASK_STATES, PAUSABLE_TASK_STATES

#: Name of the scheduler's lease (scheduler.manager.LEASE_NAME; repeated to keep this module light).
SCHEDULER_LEASE = "scheduler"
#: How many of the slowest subtasks the task page lists.
SLOWEST = 5
#: States in which a subtask's work is over.
_ENDED = ("succeed", "failed", "canceled")


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value is not None else None


def step_name(step: int) -> str:
    if step == STEP_INIT:
        return "init"
    if step == STEP_DONE:
        return "done"
    return str(step)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def allowed_actions(state: TaskState) -> list[str]:
    """The actions the client API accepts in ``state`` (the pages show only these buttons)."""
    out = []
    if state in PAUSABLE_TASK_STATES:
        out.append("pause")
    if state == TaskState.PAUSED:
        out.append("resume")
    if state in CANCELLABLE_TASK_STATES:
        out.append("cancel")
    if state in MODIFIABLE_TASK_STATES:
        out.append("modify")
    return out


def _step_doc(step: int, st: reads.StepStats, now: datetime, current: bool) -> dict[str, Any]:
    total = sum(st.counts.values())
    finished = sum(st.counts.get(s, 0) for s in _ENDED)
    ended = st.last_end if finished == total and total else None
    span = _seconds(st.first_start, ended or (now if current else st.last_end))
    rate_rows = st.row_count / span if span else None
    rate_bytes = st.bytes / span if span else None
    eta = None
    if current and span and 0 < st.counts.get("succeed", 0) < total:
        done = st.counts.get("succeed", 0)
        eta = span * (total - done) / done
    return {
        "step": step,
        "total": total,
        "finished": finished,
        "succeed": st.counts.get("succeed", 0),
        "counts": dict(sorted(st.counts.items())),
        "progress": finished / total if total else 0.0,
        "row_count": st.row_count,
        "bytes": st.bytes,
        "rows_per_second": rate_rows,
        "bytes_per_second": rate_bytes,
        "started": iso(st.first_start),
        "ended": iso(ended),
        "eta_seconds": eta,
    }


def task_doc(task: Task, stats: dict[int, reads.StepStats], now: datetime) -> dict[str, Any]:
    """One task as the tasks page shows it: state, step k of n, progress per step, rates, ETA."""
    done = task.state in TASK_DONE_STATES
    steps = sorted(s for s in stats if s >= 0)
    step_docs = [_step_doc(s, stats[s], now, current=(s == task.step and not done)) for s in steps]
    current = next((d for d in step_docs if d["step"] == task.step), step_docs[-1] if step_docs else None)
    began = task.start_time or task.create_time
    elapsed = _seconds(began, task.end_time if done and task.end_time else now)
    return {
        "id": task.id,
        "key": task.key,
        "type": task.type,
        "state": task.state.value,
        "step": task.step,
        "step_name": step_name(task.step),
        # k of n: n counts the steps planned so far (a task type decides its next step late).
        "step_index": steps.index(task.step) + 1 if task.step in steps else (len(steps) if done else 0),
        "step_count": len(steps),
        "steps": step_docs,
        "priority": task.priority,
        "concurrency": task.concurrency,
        "max_node_count": task.max_node_count,
        "target_scope": task.target_scope,
        "create_time": iso(task.create_time),
        "start_time": iso(task.start_time),
        "state_update_time": iso(task.state_update_time),
        "end_time": iso(task.end_time),
        "elapsed_seconds": elapsed,
        "eta_seconds": current["eta_seconds"] if current is not None and not done else None,
        "rows_per_second": current["rows_per_second"] if current is not None else None,
        "bytes_per_second": current["bytes_per_second"] if current is not None else None,
        "error": str(task.error) if task.error is not None else None,
        "done": done,
        "allowed_actions": allowed_actions(task.state),
    }


def tasks_view(tm: TaskManager, *, states: list[str] | None = None, limit: int = 100) -> dict[str, Any]:
    """``GET /api/tasks``: live tasks first, then finished ones from history."""
    now = tm.server_time()
    tasks = tm.list_tasks(states or None, limit=limit)
    stats = reads.step_stats(tm, [t.id for t in tasks])
    return {"now": iso(now), "tasks": [task_doc(t, stats.get(t.id, {}), now) for t in tasks]}


def find_task(tm: TaskManager, key_or_id: str) -> Task:
    """By key, or by id when the text is a number that is not also a key; clear 404 text otherwise."""
    try:
        return tm.get_task_by_key_with_history(key_or_id)
    except TaskNotFoundError:
        pass
    if key_or_id.isdigit():
        try:
            return tm.get_task_by_id_with_history(int(key_or_id))
        except TaskNotFoundError:
            pass
    raise TaskNotFoundError(f"no task with key or id {key_or_id!r}, live or in history")


def _subtask_doc(s: Subtask, now: datetime) -> dict[str, Any]:
    end = s.end_time if s.state.value in _ENDED else None
    return {
        "id": s.id,
        "step": s.step,
        "ordinal": s.ordinal,
        "node": s.exec_id,
        "state": s.state.value,
        "start_time": iso(s.start_time),
        "end_time": iso(end),
        "duration_seconds": _seconds(s.start_time, end or (now if s.state.value == "running" else None)),
        "error": str(s.error) if s.error is not None else None,
    }


def _timeline(task: Task, stats: dict[int, reads.StepStats], source: str) -> list[dict[str, Any]]:
    """State changes as far as the rows record them: task times and each step's first and last subtask."""
    events: list[tuple[datetime, str]] = [(task.create_time, "submitted")]
    if task.start_time is not None:
        events.append((task.start_time, "planning started (running)"))
    for step in sorted(s for s in stats if s >= 0):
        st = stats[step]
        if st.first_create is not None:
            events.append((st.first_create, f"step {step} planned: {sum(st.counts.values())} subtasks"))
        if st.first_start is not None:
            events.append((st.first_start, f"step {step}: first subtask started"))
        if st.last_end is not None and all(st.counts.get(s, 0) == 0 for s in ("pending", "running")):
            events.append((st.last_end, f"step {step}: last subtask ended"))
    last_change = task.state_update_time
    if last_change is not None and task.end_time is None and last_change != task.create_time:
        events.append((last_change, f"state changed to {task.state.value}"))
    if task.end_time is not None:
        where = " (moved to history)" if source == "history" else ""
        events.append((task.end_time, f"ended {task.state.value}{where}"))
    events.sort(key=lambda e: e[0])
    return [{"time": iso(t), "event": text} for t, text in events]


def task_detail_view(tm: TaskManager, key_or_id: str) -> dict[str, Any]:
    """``GET /api/tasks/<key or id>``: the task, its subtasks per step and node, slowest, failed, timeline."""
    now = tm.server_time()
    task = find_task(tm, key_or_id)
    stats = reads.step_stats(tm, [task.id]).get(task.id, {})
    doc = task_doc(task, stats, now)
    subtasks = tm.get_subtasks(task.id)
    subs = [_subtask_doc(s, now) for s in subtasks]
    for step_doc in doc["steps"]:
        by_node = stats[step_doc["step"]].by_node
        step_doc["nodes"] = [{"node": n, "counts": dict(sorted(c.items()))} for n, c in sorted(by_node.items())]
    timed = [s for s in subs if s["duration_seconds"] is not None]
    timed.sort(key=lambda s: s["duration_seconds"], reverse=True)
    source = reads.task_source(tm, task.id)
    doc.update(
        source=source,
        slowest=timed[:SLOWEST],
        failed=[s for s in subs if s["state"] in ("failed", "canceled") or s["error"]],
        timeline=_timeline(task, stats, source),
        subtasks=subs,
        pending_modification=task.state == TaskState.MODIFYING,
    )
    return doc


def nodes_view(tm: TaskManager, *, node_ttl: float | None = None) -> dict[str, Any]:
    """``GET /api/nodes``: each node's role, slots used/total, executors, heartbeat age; the lease holder."""
    now = tm.server_time()
    nodes = tm.get_all_nodes()
    used = tm.get_used_slots_on_nodes()
    executors = reads.executors_by_node(tm)
    holder = tm.get_lease_owner(SCHEDULER_LEASE)
    out = []
    for n in nodes:
        age = _seconds(n.heartbeat, now) if n.heartbeat else None
        out.append(
            {
                "id": n.id,
                "role": n.role,
                "slots": n.cpu_count,
                "slots_used": used.get(n.id, 0),
                "executors": executors.get(n.id, 0),
                "heartbeat": iso(n.heartbeat),
                "heartbeat_age_seconds": age,
                "alive": None if node_ttl is None or age is None else age < node_ttl,
                "lease_holder": n.id == holder,
            }
        )
    return {"now": iso(now), "scheduler_lease_holder": holder, "nodes": out}
