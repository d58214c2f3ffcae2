"""How ``celery dxf`` shows things: JSON documents and aligned text tables, as plain strings.

Pure functions of the project's objects (no click, no database), so the output formats that
scripts parse live in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dxf_celery.handle import TaskProgress
from dxf_celery.proto import STEP_DONE, STEP_INIT, ManagedNode, Subtask, SubtaskState, Task

#: Longest subtask error shown in a table cell (``--json`` has the whole text).
ERROR_CELL = 60


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [_line(headers, widths)] + [_line(row, widths) for row in rows]
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def step_name(step: int) -> str:
    if step == STEP_INIT:
        return "init"
    if step == STEP_DONE:
        return "done"
    return str(step)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _meta_value(meta: bytes) -> Any:
    """The meta as JSON when it is JSON, else as text."""
    try:
        return json.loads(meta)
    except (ValueError, UnicodeDecodeError):
        return meta.decode("utf-8", "replace")


# ---------------------------------------------------------------------------- JSON documents


def task_to_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "key": task.key,
        "type": task.type,
        "state": task.state.value,
        "step": task.step,
        "priority": task.priority,
        "concurrency": task.concurrency,
        "target_scope": task.target_scope,
        "max_node_count": task.max_node_count,
        "create_time": _iso(task.create_time),
        "start_time": _iso(task.start_time),
        "end_time": _iso(task.end_time),
        "error": str(task.error) if task.error is not None else None,
        "meta": _meta_value(task.meta),
    }


def subtask_to_dict(s: Subtask) -> dict[str, Any]:
    return {
        "id": s.id,
        "step": s.step,
        "ordinal": s.ordinal,
        "state": s.state.value,
        "exec_id": s.exec_id,
        "concurrency": s.concurrency,
        "error": str(s.error) if s.error is not None else None,
        "summary": json.loads(s.summary) if s.summary else {},
        "meta": _meta_value(s.meta),
    }


def node_to_dict(node: ManagedNode, used: int) -> dict[str, Any]:
    return {
        "id": node.id,
        "role": node.role,
        "slots": node.cpu_count,
        "used_slots": used,
        "heartbeat": _iso(node.heartbeat),
    }


def task_detail(
    task: Task, progress: TaskProgress, subtasks: Sequence[Subtask] | None, waiting: str | None = None
) -> dict[str, Any]:
    """``show --json``: the task, why it waits (or null), its progress per step and, if asked, its subtasks."""
    data = task_to_dict(task)
    data["waiting"] = waiting
    data["progress"] = progress.to_dict()["steps"]
    if subtasks is not None:
        data["subtasks"] = [subtask_to_dict(s) for s in subtasks]
    return data


# ---------------------------------------------------------------------------- text


def task_table(tasks: Sequence[Task]) -> str:
    if not tasks:
        return "no tasks"
    rows = [
        [str(t.id), t.key, t.type, t.state.value, step_name(t.step), str(t.concurrency), fmt_time(t.create_time)]
        for t in tasks
    ]
    return table(rows, ["ID", "KEY", "TYPE", "STATE", "STEP", "CONC", "CREATED (UTC)"])


def task_fields(task: Task, waiting: str | None = None) -> str:
    """``show``: one ``name  value`` line per field of the task (and why it waits, if it does)."""
    fields = [
        ("id", str(task.id)),
        ("key", task.key),
        ("type", task.type),
        ("state", task.state.value),
        ("step", step_name(task.step)),
        ("priority", str(task.priority)),
        ("concurrency", str(task.concurrency)),
        ("max nodes", str(task.max_node_count or "no limit")),
        ("scope", task.target_scope or "-"),
        ("created", fmt_time(task.create_time)),
        ("started", fmt_time(task.start_time)),
        ("ended", fmt_time(task.end_time)),
        ("error", str(task.error) if task.error is not None else "-"),
    ]
    if waiting is not None:
        fields.append(("waiting", waiting))
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in fields)


def progress_text(progress: TaskProgress) -> str:
    """Per step: subtasks done out of planned, rows, and the subtasks not yet succeeded."""
    if not progress.steps:
        return "steps     none planned yet"
    rows = []
    for step, sp in sorted(progress.steps.items()):
        others = ", ".join(
            f"{n} {st.value}"
            for st, n in sorted(sp.counts.items(), key=lambda kv: kv[0].value)
            if st != SubtaskState.SUCCEED and n
        )
        rows.append([step_name(step), f"{sp.finished}/{sp.total}", str(sp.row_count), others or "-"])
    return "\n" + table(rows, ["STEP", "DONE", "ROWS", "OTHER SUBTASKS"])


def subtask_table(subtasks: Sequence[Subtask]) -> str:
    if not subtasks:
        return "no subtasks"
    rows = [
        [str(s.id), step_name(s.step), str(s.ordinal), s.state.value, s.exec_id, _summary_rows(s), _error_cell(s)]
        for s in subtasks
    ]
    return table(rows, ["ID", "STEP", "ORD", "STATE", "NODE", "ROWS", "ERROR"])


def _summary_rows(s: Subtask) -> str:
    try:
        return str(json.loads(s.summary or "{}").get("row_count", 0))
    except ValueError:
        return "-"


def _error_cell(s: Subtask) -> str:
    return str(s.error)[:ERROR_CELL] if s.error is not None else ""


def node_table(nodes: Sequence[ManagedNode], used: Mapping[str, int], now: datetime) -> str:
    if not nodes:
        return "no nodes registered: start a worker of an app that calls DXF(app)"
    rows = [
        [
            n.id,
            n.role or "-",
            f"{used.get(n.id, 0)}/{n.cpu_count}",
            f"{(now - n.heartbeat).total_seconds():.1f}s ago" if n.heartbeat else "-",
        ]
        for n in nodes
    ]
    return table(rows, ["NODE", "ROLE", "SLOTS USED", "HEARTBEAT"])
