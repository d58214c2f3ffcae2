"""Row mapping: database rows to proto dataclasses, and the small helpers every query shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import CompoundSelect, Row, Select, Table, union_all

from dxf_celery.errors import InvalidTaskError
from dxf_celery.proto import (
    ExtraParams,
    ModifyParam,
    StoredError,
    Subtask,
    SubtaskBase,
    SubtaskState,
    Task,
    TaskBase,
    TaskState,
)
from dxf_celery.storage.tables import subtask_history_table, subtask_table

#: The subtask states that hold a slot on their node.
ACTIVE = (SubtaskState.PENDING.value, SubtaskState.RUNNING.value)

TASK_BASE_COLUMNS = (
    "id",
    "task_key",
    "type",
    "state",
    "step",
    "priority",
    "concurrency",
    "create_time",
    "target_scope",
    "max_node_count",
    "extra_params",
)
SUBTASK_BASE_COLUMNS = (
    "id",
    "task_id",
    "step",
    "type",
    "state",
    "exec_id",
    "ordinal",
    "concurrency",
    "create_time",
    "start_time",
)


def values_of(states: Iterable[Any]) -> list[str]:
    """The stored strings of enum states (plain strings pass through)."""
    return [s.value if hasattr(s, "value") else str(s) for s in states]


def task_base_from_row(row: Row[Any]) -> TaskBase:
    m = row._mapping
    return TaskBase(
        id=m["id"],
        key=m["task_key"],
        type=m["type"],
        state=TaskState(m["state"]),
        step=m["step"],
        priority=m["priority"],
        concurrency=m["concurrency"],
        create_time=m["create_time"],
        target_scope=m["target_scope"],
        max_node_count=m["max_node_count"],
        extra_params=ExtraParams.from_json(m["extra_params"]),
    )


def task_from_row(row: Row[Any]) -> Task:
    m = row._mapping
    base = task_base_from_row(row)
    return Task(
        **vars(base),
        meta=bytes(m["meta"]) if m["meta"] is not None else b"",
        error=StoredError.from_json(m["error"]),
        start_time=m["start_time"],
        state_update_time=m["state_update_time"],
        end_time=m["end_time"],
        modify_param=ModifyParam.from_json(m["modify_params"]),
    )


def subtask_base_from_row(row: Row[Any]) -> SubtaskBase:
    m = row._mapping
    return SubtaskBase(
        id=m["id"],
        task_id=m["task_id"],
        step=m["step"],
        type=m["type"],
        state=SubtaskState(m["state"]),
        exec_id=m["exec_id"],
        ordinal=m["ordinal"],
        concurrency=m["concurrency"],
        create_time=m["create_time"],
        start_time=m["start_time"],
    )


def subtask_from_row(row: Row[Any]) -> Subtask:
    m = row._mapping
    base = subtask_base_from_row(row)
    return Subtask(
        **vars(base),
        meta=bytes(m["meta"]),
        summary=m["summary"],
        error=StoredError.from_json(m["error"]),
        update_time=m["state_update_time"],
        end_time=m["end_time"],
    )


def check_meta(meta: object, what: str = "meta") -> bytes:
    """``meta`` as bytes, or :class:`InvalidTaskError` naming what to do instead."""
    if not isinstance(meta, (bytes, bytearray, memoryview)):
        raise InvalidTaskError(
            f"{what} must be bytes, got {type(meta).__name__}; encode it first, e.g. json.dumps(obj).encode()"
        )
    return bytes(meta)


def live_and_history(part: Callable[[Table], Select[Any]]) -> CompoundSelect[Any]:
    """The same query over the live subtask table and its history, as ONE statement.

    Two statements would each see their own snapshot under READ COMMITTED, so a transfer to
    history committing between them would show the moved rows twice (or not at all).
    """
    return union_all(part(subtask_table), part(subtask_history_table))


#: What the checkpoint column holds while a subtask has saved none (rows of older versions too).
NO_CHECKPOINT = "{}"
_CHECKPOINT_KEY = "checkpoint"


def dump_checkpoint(checkpoint: Any) -> str:
    """The column text of a saved checkpoint: wrapped, so that a saved ``{}`` or ``None``
    stays distinguishable from "nothing saved". Raises ``TypeError`` for non-JSON values."""
    return json.dumps({_CHECKPOINT_KEY: checkpoint})


def load_checkpoint(text: str | None) -> Any:
    """The saved checkpoint, or None when nothing was saved (or the text is unreadable)."""
    data = load_json(text)
    return data.get(_CHECKPOINT_KEY)


def load_json(text: str | None) -> dict[str, Any]:
    """A stored JSON object, or ``{}`` for empty or unparsable text."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
