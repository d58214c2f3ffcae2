"""TaskManager: the one object that speaks SQL.

Every state write is a compare-and-set on the state the caller expects; losing the race is
a silent no-op except in :meth:`TaskManager.start_subtask` and
:meth:`TaskManager.modify_task_by_id`, as in DXF. Every executor write is keyed by
``(subtask id, exec_id)`` so a node that lost a subtask to the balancer cannot touch it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Engine,
    Row,
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from dxf_celery.errors import (
    InvalidTaskError,
    SubtaskNotFoundError,
    TaskAlreadyExistsError,
    TaskChangedError,
    TaskNotFoundError,
    TaskStateNotAllowedError,
    UnstableSubtasksError,
)
from dxf_celery.proto import (
    CANCELLABLE_TASK_STATES,
    EMPTY_META,
    MAX_CONCURRENT_TASKS,
    MODIFIABLE_TASK_STATES,
    NO_RESOURCE_TASK_STATES,
    NORMAL_PRIORITY,
    PAUSABLE_TASK_STATES,
    STEP_DONE,
    STEP_INIT,
    TASK_DONE_STATES,
    UNFINISHED_TASK_STATES,
    ExtraParams,
    ManagedNode,
    ModifyParam,
    StoredError,
    Subtask,
    SubtaskBase,
    SubtaskState,
    Task,
    TaskBase,
    TaskExecInfo,
    TaskState,
    serialize_error,
    validate_priority,
)
from dxf_celery.storage.engine import build_engines, is_memory_sqlite, is_sqlite, run_transaction, safe_url
from dxf_celery.storage.tables import (
    lease_table,
    node_table,
    subtask_history_table,
    subtask_table,
    task_history_table,
    task_table,
)

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Subtask history older than this is deleted by :meth:`TaskManager.gc_subtasks` (DXF: 14 days).
DEFAULT_SUBTASK_KEEP_SECONDS = 14 * 24 * 3600.0
#: A batched step switch inserts at most this many bytes of subtask meta per transaction.
MAX_SUBTASK_BATCH_BYTES = 16 * 1024 * 1024
#: Longest task key the table holds.
MAX_KEY_LENGTH = 256
#: Longest task type and target scope the table holds.
MAX_TYPE_LENGTH = 256
MAX_SCOPE_LENGTH = 256

_ACTIVE = (SubtaskState.PENDING.value, SubtaskState.RUNNING.value)

_TASK_BASE_COLUMNS = (
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
_SUBTASK_BASE_COLUMNS = (
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


def utcnow() -> datetime:
    """Naive UTC now: every timestamp column holds naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _values(states: Iterable[Any]) -> list[str]:
    return [s.value if hasattr(s, "value") else str(s) for s in states]


def _task_base_from_row(row: Row[Any]) -> TaskBase:
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


def _task_from_row(row: Row[Any]) -> Task:
    m = row._mapping
    base = _task_base_from_row(row)
    return Task(
        **vars(base),
        meta=bytes(m["meta"]) if m["meta"] is not None else b"",
        error=StoredError.from_json(m["error"]),
        start_time=m["start_time"],
        state_update_time=m["state_update_time"],
        end_time=m["end_time"],
        modify_param=ModifyParam.from_json(m["modify_params"]),
    )


def _subtask_base_from_row(row: Row[Any]) -> SubtaskBase:
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


def _subtask_from_row(row: Row[Any]) -> Subtask:
    m = row._mapping
    base = _subtask_base_from_row(row)
    return Subtask(
        **vars(base),
        meta=bytes(m["meta"]),
        summary=m["summary"],
        error=StoredError.from_json(m["error"]),
        update_time=m["state_update_time"],
        end_time=m["end_time"],
    )


def _check_meta(meta: object, what: str = "meta") -> bytes:
    if not isinstance(meta, (bytes, bytearray, memoryview)):
        raise InvalidTaskError(
            f"{what} must be bytes, got {type(meta).__name__}; encode it first, e.g. json.dumps(obj).encode()"
        )
    return bytes(meta)


class TaskManager:
    """All SQL of dxf-celery: the executor-side ``TaskTable`` and the scheduler side."""

    def __init__(self, url_or_engine: str | URL | Engine) -> None:
        if isinstance(url_or_engine, Engine):
            self.read_engine = self.write_engine = url_or_engine
        else:
            self.read_engine, self.write_engine = build_engines(url_or_engine)
        self.url = safe_url(self.write_engine.url)
        self._sqlite = is_sqlite(self.write_engine)
        # ``sqlite://`` is one shared connection: transactions from two threads would interleave.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if is_memory_sqlite(self.write_engine) else contextlib.nullcontext()
        )

    # ------------------------------------------------------------------ plumbing

    def _write(self, fn: Callable[[Connection], T]) -> T:
        with self._lock:
            return run_transaction(self.write_engine, self.url, fn)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        with self._lock:
            return run_transaction(self.read_engine, self.url, fn)

    def dispose(self) -> None:
        """Close every pooled connection (call before forking or at shutdown)."""
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()

    def create_tables(self) -> None:
        """Create the tables straight from the metadata (tests; production uses :func:`migrate`)."""
        from dxf_celery.storage.tables import metadata

        metadata.create_all(self.write_engine)

    # ------------------------------------------------------------------ tasks: create and read

    def create_task(
        self,
        key: str,
        task_type: str,
        concurrency: int,
        *,
        target_scope: str = "",
        max_node_count: int = 0,
        extra_params: ExtraParams | None = None,
        meta: bytes = EMPTY_META,
        priority: int = NORMAL_PRIORITY,
    ) -> int:
        """Insert a pending task and return its id.

        With no node registered the task is accepted and waits, because queue users submit
        while workers are down; with nodes, ``concurrency`` must fit one node's CPU count.
        """
        if not isinstance(key, str) or not key.strip():
            raise InvalidTaskError("task key must be a non-empty string; it names the task and makes submit idempotent")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidTaskError(f"task key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
        if not isinstance(task_type, str) or not task_type.strip():
            raise InvalidTaskError("task type must be a non-empty string naming a registered task type")
        if len(task_type) > MAX_TYPE_LENGTH:
            raise InvalidTaskError(f"task type is {len(task_type)} characters long; the limit is {MAX_TYPE_LENGTH}")
        if not isinstance(target_scope, str) or len(target_scope) > MAX_SCOPE_LENGTH:
            raise InvalidTaskError(
                f"target_scope must be a string of at most {MAX_SCOPE_LENGTH} characters naming a node role "
                f"('' = any node), got {target_scope!r:.80}"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidTaskError(f"concurrency must be an int >= 1 (slots per node), got {concurrency!r}")
        if isinstance(max_node_count, bool) or not isinstance(max_node_count, int) or max_node_count < 0:
            raise InvalidTaskError(f"max_node_count must be an int >= 0 (0 = no limit), got {max_node_count!r}")
        try:
            validate_priority(priority)
        except ValueError as err:
            raise InvalidTaskError(str(err)) from None
        meta = _check_meta(meta)
        if extra_params is not None and not isinstance(extra_params, ExtraParams):
            raise InvalidTaskError(
                f"extra_params must be a dxf_celery.proto.ExtraParams, got {type(extra_params).__name__}"
            )
        params = extra_params or ExtraParams()

        def txn(conn: Connection) -> int:
            cpu = self._cpu_count(conn, None)
            if cpu is not None and concurrency > cpu:
                raise InvalidTaskError(
                    f"task concurrency {concurrency} is larger than the CPU slots ({cpu}) of the registered nodes; "
                    f"lower concurrency or give the nodes more slots (dxf_node_slots)"
                )
            if conn.execute(select(task_history_table.c.id).where(task_history_table.c.task_key == key)).first():
                raise TaskAlreadyExistsError(
                    f"task key {key!r} was used by a finished task (in history); pick a new key"
                )
            now = utcnow()
            result = conn.execute(
                insert(task_table).values(
                    task_key=key,
                    type=task_type,
                    state=TaskState.PENDING.value,
                    step=STEP_INIT,
                    priority=priority,
                    concurrency=concurrency,
                    target_scope=target_scope,
                    max_node_count=max_node_count,
                    extra_params=params.to_json(),
                    meta=meta,
                    create_time=now,
                    state_update_time=now,
                )
            )
            pk = result.inserted_primary_key
            assert pk is not None
            return int(pk[0])

        try:
            return self._write(txn)
        except sa_exc.IntegrityError:
            raise TaskAlreadyExistsError(f"task key {key!r} exists already; pick a new key") from None

    def _get_one_task(self, table_where: list[tuple[Any, Any]], base: bool) -> Task | TaskBase:
        def txn(conn: Connection) -> Task | TaskBase:
            for table, where in table_where:
                cols = [table.c[c] for c in _TASK_BASE_COLUMNS] if base else [table]
                row = conn.execute(select(*cols).where(where(table))).first()
                if row is not None:
                    return _task_base_from_row(row) if base else _task_from_row(row)
            raise TaskNotFoundError()

        return self._read(txn)

    def get_task_by_id(self, task_id: int) -> Task:
        """The full live task; :class:`TaskNotFoundError` when there is none."""
        task = self._get_one_task([(task_table, lambda t: t.c.id == task_id)], base=False)
        assert isinstance(task, Task)
        return task

    def get_task_base_by_id(self, task_id: int) -> TaskBase:
        return self._get_one_task([(task_table, lambda t: t.c.id == task_id)], base=True)

    def get_task_by_key(self, key: str) -> Task:
        task = self._get_one_task([(task_table, lambda t: t.c.task_key == key)], base=False)
        assert isinstance(task, Task)
        return task

    def get_task_by_id_with_history(self, task_id: int) -> Task:
        where = lambda t: t.c.id == task_id  # noqa: E731
        task = self._get_one_task([(task_table, where), (task_history_table, where)], base=False)
        assert isinstance(task, Task)
        return task

    def get_task_by_key_with_history(self, key: str) -> Task:
        where = lambda t: t.c.task_key == key  # noqa: E731
        task = self._get_one_task([(task_table, where), (task_history_table, where)], base=False)
        assert isinstance(task, Task)
        return task

    def get_task_base_by_id_with_history(self, task_id: int) -> TaskBase:
        where = lambda t: t.c.id == task_id  # noqa: E731
        return self._get_one_task([(task_table, where), (task_history_table, where)], base=True)

    def get_task_base_by_key_with_history(self, key: str) -> TaskBase:
        where = lambda t: t.c.task_key == key  # noqa: E731
        return self._get_one_task([(task_table, where), (task_history_table, where)], base=True)

    def _rank(self, table: Any) -> tuple[Any, ...]:
        return (table.c.priority, table.c.create_time, table.c.id)

    def get_tasks_in_states(self, *states: TaskState | str) -> list[Task]:
        """Full live tasks in any of ``states``, in rank order; no state → empty list."""
        if not states:
            return []
        stmt = select(task_table).where(task_table.c.state.in_(_values(states))).order_by(*self._rank(task_table))
        return self._read(lambda conn: [_task_from_row(r) for r in conn.execute(stmt)])

    def get_task_bases_in_states(self, *states: TaskState | str) -> list[TaskBase]:
        if not states:
            return []
        cols = [task_table.c[c] for c in _TASK_BASE_COLUMNS]
        stmt = select(*cols).where(task_table.c.state.in_(_values(states))).order_by(*self._rank(task_table))
        return self._read(lambda conn: [_task_base_from_row(r) for r in conn.execute(stmt)])

    def get_all_tasks(self) -> list[TaskBase]:
        cols = [task_table.c[c] for c in _TASK_BASE_COLUMNS]
        stmt = select(*cols).order_by(*self._rank(task_table))
        return self._read(lambda conn: [_task_base_from_row(r) for r in conn.execute(stmt)])

    def get_top_unfinished_tasks(self, limit: int = 2 * MAX_CONCURRENT_TASKS) -> list[TaskBase]:
        """Unfinished tasks in rank order, at most ``limit`` (DXF: 32)."""
        return self._top_tasks(UNFINISHED_TASK_STATES, limit)

    def get_top_no_need_resource_tasks(self, limit: int = 2 * MAX_CONCURRENT_TASKS) -> list[TaskBase]:
        """Tasks whose scheduler needs no slots (cancel, pause, revert, modify), in rank order."""
        return self._top_tasks(NO_RESOURCE_TASK_STATES, limit)

    def _top_tasks(self, states: Iterable[TaskState], limit: int) -> list[TaskBase]:
        cols = [task_table.c[c] for c in _TASK_BASE_COLUMNS]
        stmt = (
            select(*cols)
            .where(task_table.c.state.in_(_values(states)))
            .order_by(*self._rank(task_table))
            .limit(limit)
        )
        return self._read(lambda conn: [_task_base_from_row(r) for r in conn.execute(stmt)])

    def list_tasks(
        self, states: Sequence[TaskState | str] | None = None, *, with_history: bool = True, limit: int = 1000
    ) -> list[Task]:
        """Tasks (live first, then history) in rank order, optionally filtered by state."""

        def part(table: Table, source: int) -> Select[Any]:
            stmt = select(literal(source).label("source"), *table.c)
            return stmt.where(table.c.state.in_(_values(states))) if states else stmt

        tables = [task_table, task_history_table] if with_history else [task_table]
        rows = union_all(*(part(t, i) for i, t in enumerate(tables))).subquery()
        stmt = select(rows).order_by(rows.c.source, rows.c.priority, rows.c.create_time, rows.c.id).limit(limit)
        return self._read(lambda conn: [_task_from_row(r) for r in conn.execute(stmt)])

    def get_task_exec_info_by_exec_id(self, exec_id: str) -> list[TaskExecInfo]:
        """Tasks with runnable subtasks on ``exec_id`` in running/reverting/pausing, in rank order."""

        def txn(conn: Connection) -> list[TaskExecInfo]:
            rows = conn.execute(
                select(subtask_table.c.task_id, func.max(subtask_table.c.concurrency))
                .where(subtask_table.c.exec_id == exec_id, subtask_table.c.state.in_(_ACTIVE))
                .group_by(subtask_table.c.task_id)
            ).all()
            if not rows:
                return []
            concurrency = {r[0]: r[1] for r in rows}
            cols = [task_table.c[c] for c in _TASK_BASE_COLUMNS]
            tasks = conn.execute(
                select(*cols)
                .where(
                    task_table.c.id.in_(list(concurrency)),
                    task_table.c.state.in_(
                        _values((TaskState.RUNNING, TaskState.REVERTING, TaskState.PAUSING))
                    ),
                )
                .order_by(*self._rank(task_table))
            ).all()
            return [TaskExecInfo(_task_base_from_row(t), concurrency[t.id]) for t in tasks]

        return self._read(txn)

    # ------------------------------------------------------------------ tasks: transitions

    def _set_task_state(
        self,
        task_id: int,
        from_states: Iterable[TaskState],
        to_state: TaskState,
        *,
        error: BaseException | None = None,
        set_error: bool = False,
        end: bool = False,
        extra: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        now = utcnow()
        values: dict[str, Any] = {"state": to_state.value, "state_update_time": now}
        if set_error:
            values["error"] = serialize_error(error)
        if end:
            values["end_time"] = now
        if extra:
            values.update(extra)
        where = task_table.c.id == task_id if key is None else task_table.c.task_key == key
        stmt = update(task_table).where(where, task_table.c.state.in_(_values(from_states))).values(**values)
        return self._write(lambda conn: conn.execute(stmt).rowcount > 0)

    def cancel_task(self, task_id: int) -> bool:
        """pending/running/awaiting-resolution → cancelling; False when not cancellable."""
        return self._set_task_state(task_id, CANCELLABLE_TASK_STATES, TaskState.CANCELLING)

    def cancel_task_by_key(self, key: str) -> bool:
        return self._set_task_state(0, CANCELLABLE_TASK_STATES, TaskState.CANCELLING, key=key)

    def fail_task(self, task_id: int, current_state: TaskState, err: BaseException | None) -> bool:
        """``current_state`` → failed: the framework could never run the task."""
        return self._set_task_state(task_id, [current_state], TaskState.FAILED, error=err, set_error=True, end=True)

    def revert_task(self, task_id: int, current_state: TaskState, err: BaseException | None) -> bool:
        return self._set_task_state(task_id, [current_state], TaskState.REVERTING, error=err, set_error=True)

    def awaiting_resolve_task(self, task_id: int, current_state: TaskState, err: BaseException | None) -> bool:
        return self._set_task_state(
            task_id, [current_state], TaskState.AWAITING_RESOLUTION, error=err, set_error=True
        )

    def reverted_task(self, task_id: int) -> bool:
        return self._set_task_state(task_id, [TaskState.REVERTING], TaskState.REVERTED, end=True)

    def pause_task(self, key: str) -> bool:
        """pending/running → pausing by key; returns whether a task was found in such a state."""
        return self._set_task_state(0, PAUSABLE_TASK_STATES, TaskState.PAUSING, key=key)

    def paused_task(self, task_id: int) -> bool:
        return self._set_task_state(task_id, [TaskState.PAUSING], TaskState.PAUSED)

    def resume_task(self, key: str) -> bool:
        """paused → resuming by key; returns whether a paused task was found."""
        return self._set_task_state(0, [TaskState.PAUSED], TaskState.RESUMING, key=key)

    def resumed_task(self, task_id: int) -> bool:
        return self._set_task_state(task_id, [TaskState.RESUMING], TaskState.RUNNING)

    def succeed_task(self, task_id: int) -> bool:
        """running → succeed at ``STEP_DONE``."""
        return self._set_task_state(
            task_id, [TaskState.RUNNING], TaskState.SUCCEED, end=True, extra={"step": STEP_DONE}
        )

    def resolve_awaiting_task(self, task_id: int) -> bool:
        """Manual recovery: failed/canceled subtasks of the current step → pending, task → running."""

        def txn(conn: Connection) -> bool:
            row = conn.execute(
                select(task_table.c.step).where(
                    task_table.c.id == task_id, task_table.c.state == TaskState.AWAITING_RESOLUTION.value
                )
            ).first()
            if row is None:
                return False
            now = utcnow()
            conn.execute(
                update(subtask_table)
                .where(
                    subtask_table.c.task_id == task_id,
                    subtask_table.c.step == row.step,
                    subtask_table.c.state.in_(_values((SubtaskState.FAILED, SubtaskState.CANCELED))),
                )
                .values(state=SubtaskState.PENDING.value, error=None, state_update_time=now, end_time=None)
            )
            result = conn.execute(
                update(task_table)
                .where(task_table.c.id == task_id, task_table.c.state == TaskState.AWAITING_RESOLUTION.value)
                .values(state=TaskState.RUNNING.value, error=None, state_update_time=now)
            )
            return result.rowcount > 0

        return self._write(txn)

    def update_task_extra_params(self, task_id: int, params: ExtraParams) -> None:
        stmt = update(task_table).where(task_table.c.id == task_id).values(extra_params=params.to_json())
        self._write(lambda conn: conn.execute(stmt))

    def modify_task_by_id(self, task_id: int, param: ModifyParam) -> None:
        """Move a task to ``modifying``; it must still be in ``param.prev_state``.

        Raises :class:`TaskStateNotAllowedError` for a state that cannot be modified,
        :class:`TaskNotFoundError` and :class:`TaskChangedError` when the state moved on.
        """
        if param.prev_state not in MODIFIABLE_TASK_STATES:
            raise TaskStateNotAllowedError(
                f"a task in state {param.prev_state.value} cannot be modified; "
                f"only {', '.join(s.value for s in MODIFIABLE_TASK_STATES)} tasks can"
            )

        def txn(conn: Connection) -> None:
            row = conn.execute(select(task_table.c.state).where(task_table.c.id == task_id)).first()
            if row is None:
                raise TaskNotFoundError(f"task {task_id} not found")
            if row.state != param.prev_state.value:
                raise TaskChangedError(f"task {task_id} is {row.state}, not {param.prev_state.value}; read it again")
            result = conn.execute(
                update(task_table)
                .where(task_table.c.id == task_id, task_table.c.state == param.prev_state.value)
                .values(state=TaskState.MODIFYING.value, modify_params=param.to_json(), state_update_time=utcnow())
            )
            if result.rowcount == 0:
                raise TaskChangedError(f"task {task_id} changed state while being modified; read it again")

        self._write(txn)

    def modified_task(self, task: Task) -> bool:
        """Apply a modification: back to the previous state with the new concurrency/limits/meta.

        Returns False when another scheduler did it already.
        """
        if task.modify_param is None:
            raise TaskStateNotAllowedError(f"task {task.id} has no pending modification")
        prev = task.modify_param.prev_state
        meta = _check_meta(task.meta)

        def txn(conn: Connection) -> bool:
            now = utcnow()
            result = conn.execute(
                update(task_table)
                .where(task_table.c.id == task.id, task_table.c.state == TaskState.MODIFYING.value)
                .values(
                    state=prev.value,
                    concurrency=task.concurrency,
                    max_node_count=task.max_node_count,
                    meta=meta,
                    modify_params=None,
                    state_update_time=now,
                )
            )
            if result.rowcount == 0:
                return False
            conn.execute(
                update(subtask_table)
                .where(
                    subtask_table.c.task_id == task.id,
                    subtask_table.c.state.in_(
                        _values((SubtaskState.PENDING, SubtaskState.RUNNING, SubtaskState.PAUSED))
                    ),
                )
                .values(concurrency=task.concurrency, state_update_time=now)
            )
            return True

        return self._write(txn)

    # ------------------------------------------------------------------ step switch

    def _subtask_rows(self, task: TaskBase, step: int, subtasks: Sequence[Subtask]) -> list[dict[str, Any]]:
        ordinals = [s.ordinal for s in subtasks]
        if len(set(ordinals)) != len(ordinals):
            raise InvalidTaskError(
                f"subtask ordinals of task {task.id} step {step} repeat; number them 1..n, one per subtask"
            )
        now = utcnow()
        return [
            {
                "task_id": task.id,
                "step": step,
                "type": s.type or task.type,
                "exec_id": s.exec_id,
                "state": SubtaskState.PENDING.value,
                "concurrency": s.concurrency or task.concurrency,
                "ordinal": s.ordinal,
                "meta": _check_meta(s.meta, "subtask meta"),
                "summary": "{}",
                "checkpoint": "{}",
                "create_time": now,
            }
            for s in subtasks
        ]

    def _switch_task_update(self, conn: Connection, task: Task, next_state: TaskState, next_step: int) -> bool:
        now = utcnow()
        values: dict[str, Any] = {
            "state": next_state.value,
            "step": next_step,
            "state_update_time": now,
            "meta": _check_meta(task.meta),
        }
        if task.state == TaskState.PENDING:
            values["start_time"] = now
        result = conn.execute(
            update(task_table)
            .where(task_table.c.id == task.id, task_table.c.state == task.state.value, task_table.c.step == task.step)
            .values(**values)
        )
        return result.rowcount > 0

    def switch_task_step(self, task: Task, next_state: TaskState, next_step: int, subtasks: Sequence[Subtask]) -> bool:
        """One transaction: move the task to ``next_step`` (guarded by its state and step) and
        insert the subtasks. Returns False, inserting nothing, when another scheduler won."""
        rows = self._subtask_rows(task, next_step, subtasks)

        def txn(conn: Connection) -> bool:
            if not self._switch_task_update(conn, task, next_state, next_step):
                return False
            if rows:
                conn.execute(insert(subtask_table), rows)
            return True

        try:
            return self._write(txn)
        except sa_exc.IntegrityError:
            # Our guarded update held the task row, so the clash is with rows left by an
            # earlier batched attempt of the same step: that plan stands, ours is dropped.
            logger.warning("subtasks of task %s step %s exist already; step switch skipped", task.id, next_step)
            return False

    def switch_task_step_in_batch(
        self, task: Task, next_state: TaskState, next_step: int, subtasks: Sequence[Subtask]
    ) -> bool:
        """Step switch for plans too big for one transaction.

        Inserts in batches, skipping what an earlier (crashed or concurrent) attempt already
        inserted, then moves the task. The plan must be deterministic: finding more subtasks
        than planned raises :class:`UnstableSubtasksError`.
        """
        rows = self._subtask_rows(task, next_step, subtasks)

        def count_existing() -> int:
            stmt = select(func.count()).where(subtask_table.c.task_id == task.id, subtask_table.c.step == next_step)
            return int(self._read(lambda conn: conn.execute(stmt).scalar_one()))

        existing = count_existing()
        if existing > len(rows):
            raise UnstableSubtasksError(f"expected {len(rows)} subtasks for step {next_step}, found {existing}")
        pos = existing
        while pos < len(rows):
            end, size = pos, 0
            while end < len(rows) and (end == pos or size + len(rows[end]["meta"]) <= MAX_SUBTASK_BATCH_BYTES):
                size += len(rows[end]["meta"])
                end += 1
            batch = rows[pos:end]
            try:
                self._write(lambda conn, b=batch: conn.execute(insert(subtask_table), b))  # type: ignore[misc]
                pos = end
            except sa_exc.IntegrityError:
                # A concurrent scheduler inserted some of them: skip what exists now.
                found = count_existing()
                if found > len(rows) or found <= pos:
                    # More rows than planned, or rows that are not a prefix of our plan.
                    raise UnstableSubtasksError(
                        f"expected {len(rows)} subtasks for step {next_step}, found {found} that do not match"
                    ) from None
                pos = found
        return self._write(lambda conn: self._switch_task_update(conn, task, next_state, next_step))

    # ------------------------------------------------------------------ subtasks: executor side

    def get_subtasks_by_exec_id_and_step_and_states(
        self, exec_id: str, task_id: int, step: int, *states: SubtaskState | str
    ) -> list[Subtask]:
        stmt = (
            select(subtask_table)
            .where(
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.task_id == task_id,
                subtask_table.c.step == step,
                subtask_table.c.state.in_(_values(states)),
            )
            .order_by(subtask_table.c.id)
        )
        return self._read(lambda conn: [_subtask_from_row(r) for r in conn.execute(stmt)])

    def get_first_subtask_in_states(
        self, exec_id: str, task_id: int, step: int, *states: SubtaskState | str
    ) -> Subtask | None:
        """The lowest-id subtask of this node, task and step in ``states``, or None.

        DXF leaves the order unspecified; ordering by id makes runs reproducible.
        """
        stmt = (
            select(subtask_table)
            .where(
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.task_id == task_id,
                subtask_table.c.step == step,
                subtask_table.c.state.in_(_values(states)),
            )
            .order_by(subtask_table.c.id)
            .limit(1)
        )

        def txn(conn: Connection) -> Subtask | None:
            row = conn.execute(stmt).first()
            return _subtask_from_row(row) if row is not None else None

        return self._read(txn)

    def start_subtask(self, subtask_id: int, exec_id: str) -> None:
        """pending → running for the owning node; :class:`SubtaskNotFoundError` otherwise.

        Unlike DXF this also requires ``pending``, so two racers can never both start it.
        """
        now = utcnow()
        stmt = (
            update(subtask_table)
            .where(
                subtask_table.c.id == subtask_id,
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.state == SubtaskState.PENDING.value,
            )
            .values(state=SubtaskState.RUNNING.value, start_time=now, state_update_time=now)
        )
        if self._write(lambda conn: conn.execute(stmt).rowcount) == 0:
            raise SubtaskNotFoundError(f"subtask {subtask_id} is not pending on {exec_id}")

    def update_subtask_state_and_error(
        self, exec_id: str, subtask_id: int, state: SubtaskState, err: BaseException | None
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {"state": state.value, "error": serialize_error(err), "state_update_time": now}
        if state in (SubtaskState.SUCCEED, SubtaskState.FAILED, SubtaskState.CANCELED):
            values["end_time"] = now
        stmt = (
            update(subtask_table)
            .where(subtask_table.c.id == subtask_id, subtask_table.c.exec_id == exec_id)
            .values(**values)
        )
        self._write(lambda conn: conn.execute(stmt))

    def _finish_one_active(
        self, exec_id: str, task_id: int, state: SubtaskState, err: BaseException | None
    ) -> bool:
        def txn(conn: Connection) -> bool:
            row = conn.execute(
                select(subtask_table.c.id)
                .where(
                    subtask_table.c.exec_id == exec_id,
                    subtask_table.c.task_id == task_id,
                    subtask_table.c.state.in_(_ACTIVE),
                )
                .order_by(subtask_table.c.id)
                .limit(1)
            ).first()
            if row is None:
                return False
            now = utcnow()
            result = conn.execute(
                update(subtask_table)
                .where(
                    subtask_table.c.id == row.id,
                    subtask_table.c.exec_id == exec_id,
                    subtask_table.c.state.in_(_ACTIVE),
                )
                .values(
                    state=state.value,
                    error=serialize_error(err),
                    start_time=func.coalesce(subtask_table.c.start_time, now),
                    state_update_time=now,
                    end_time=now,
                )
            )
            return result.rowcount > 0

        return self._write(txn)

    def fail_subtask(self, exec_id: str, task_id: int, err: BaseException | None) -> bool:
        """Fail one pending/running subtask of this node so the scheduler reverts the task."""
        if err is None:
            return False
        return self._finish_one_active(exec_id, task_id, SubtaskState.FAILED, err)

    def cancel_subtask(self, exec_id: str, task_id: int) -> bool:
        """Cancel one pending/running subtask of this node (called each tick while reverting)."""
        return self._finish_one_active(exec_id, task_id, SubtaskState.CANCELED, None)

    def finish_subtask(self, exec_id: str, subtask_id: int, meta: bytes) -> None:
        """Mark succeed and store the (possibly rewritten) meta; keyed by id and exec_id."""
        meta = _check_meta(meta, "subtask meta")
        now = utcnow()
        stmt = (
            update(subtask_table)
            .where(subtask_table.c.id == subtask_id, subtask_table.c.exec_id == exec_id)
            .values(meta=meta, state=SubtaskState.SUCCEED.value, state_update_time=now, end_time=now)
        )
        self._write(lambda conn: conn.execute(stmt))

    def pause_subtasks(self, exec_id: str, task_id: int) -> int:
        stmt = (
            update(subtask_table)
            .where(
                subtask_table.c.task_id == task_id,
                subtask_table.c.exec_id == exec_id,
                subtask_table.c.state.in_(_ACTIVE),
            )
            .values(state=SubtaskState.PAUSED.value, state_update_time=utcnow())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def running_subtasks_back_to_pending(self, subtasks: Sequence[SubtaskBase]) -> None:
        """Give idempotent leftovers back to the balancer: running → pending, per (id, exec_id)."""
        if not subtasks:
            return

        def txn(conn: Connection) -> None:
            now = utcnow()
            for s in subtasks:
                conn.execute(
                    update(subtask_table)
                    .where(
                        subtask_table.c.id == s.id,
                        subtask_table.c.exec_id == s.exec_id,
                        subtask_table.c.state == SubtaskState.RUNNING.value,
                    )
                    .values(state=SubtaskState.PENDING.value, state_update_time=now)
                )

        self._write(txn)

    def update_subtask_summary(self, subtask_id: int, summary: str | dict[str, Any]) -> None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        stmt = update(subtask_table).where(subtask_table.c.id == subtask_id).values(summary=text)
        self._write(lambda conn: conn.execute(stmt))

    def update_subtask_checkpoint(self, subtask_id: int, checkpoint: Any) -> None:
        stmt = update(subtask_table).where(subtask_table.c.id == subtask_id).values(checkpoint=json.dumps(checkpoint))
        self._write(lambda conn: conn.execute(stmt))

    def get_subtask_checkpoint(self, subtask_id: int) -> Any:
        """The decoded checkpoint, or None when there is none."""
        stmt = select(subtask_table.c.checkpoint).where(subtask_table.c.id == subtask_id)

        def txn(conn: Connection) -> Any:
            text = conn.execute(stmt).scalar()
            if not text or text == "{}":
                return None
            return json.loads(text)

        return self._read(txn)

    # ------------------------------------------------------------------ subtasks: scheduler side

    def get_subtask(self, subtask_id: int) -> Subtask:
        stmt = select(subtask_table).where(subtask_table.c.id == subtask_id)

        def txn(conn: Connection) -> Subtask:
            row = conn.execute(stmt).first()
            if row is None:
                raise SubtaskNotFoundError(f"subtask {subtask_id} not found")
            return _subtask_from_row(row)

        return self._read(txn)

    def get_used_slots_on_nodes(self) -> dict[str, int]:
        """Per node: the sum over tasks of the largest concurrency of its active subtasks."""
        inner = (
            select(subtask_table.c.exec_id, func.max(subtask_table.c.concurrency).label("slots"))
            .where(subtask_table.c.state.in_(_ACTIVE))
            .group_by(subtask_table.c.exec_id, subtask_table.c.task_id)
            .subquery()
        )
        stmt = select(inner.c.exec_id, func.sum(inner.c.slots)).group_by(inner.c.exec_id)
        return self._read(lambda conn: {r[0]: int(r[1]) for r in conn.execute(stmt)})

    def get_active_subtasks(self, task_id: int) -> list[SubtaskBase]:
        """pending/running subtasks of a task, every step, by id (the balancer groups them)."""
        cols = [subtask_table.c[c] for c in _SUBTASK_BASE_COLUMNS]
        stmt = (
            select(*cols)
            .where(subtask_table.c.task_id == task_id, subtask_table.c.state.in_(_ACTIVE))
            .order_by(subtask_table.c.id)
        )
        return self._read(lambda conn: [_subtask_base_from_row(r) for r in conn.execute(stmt)])

    def get_subtask_cnt_group_by_states(self, task_id: int, step: int) -> dict[SubtaskState, int]:
        stmt = (
            select(subtask_table.c.state, func.count())
            .where(subtask_table.c.task_id == task_id, subtask_table.c.step == step)
            .group_by(subtask_table.c.state)
        )
        return self._read(lambda conn: {SubtaskState(r[0]): int(r[1]) for r in conn.execute(stmt)})

    def get_subtask_counts_by_step(self, task_id: int) -> dict[int, dict[SubtaskState, int]]:
        """Counts per step and state over live and history rows (for progress reports)."""

        rows = _live_and_history(lambda t: select(t.c.step, t.c.state).where(t.c.task_id == task_id)).subquery()
        stmt = select(rows.c.step, rows.c.state, func.count()).group_by(rows.c.step, rows.c.state)

        def txn(conn: Connection) -> dict[int, dict[SubtaskState, int]]:
            out: dict[int, dict[SubtaskState, int]] = {}
            for step, state, n in conn.execute(stmt):
                out.setdefault(step, {})[SubtaskState(state)] = int(n)
            return out

        return self._read(txn)

    def resume_subtasks(self, task_id: int) -> int:
        """paused → pending on every node, clearing errors."""
        stmt = (
            update(subtask_table)
            .where(subtask_table.c.task_id == task_id, subtask_table.c.state == SubtaskState.PAUSED.value)
            .values(state=SubtaskState.PENDING.value, error=None, state_update_time=utcnow())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def get_subtask_errors(self, task_id: int) -> list[StoredError | None]:
        """Errors of failed/canceled subtasks of every step (None for a subtask without one)."""
        stmt = (
            select(subtask_table.c.error)
            .where(
                subtask_table.c.task_id == task_id,
                subtask_table.c.state.in_(_values((SubtaskState.FAILED, SubtaskState.CANCELED))),
            )
            .order_by(subtask_table.c.id)
        )
        return self._read(lambda conn: [StoredError.from_json(r[0]) for r in conn.execute(stmt)])

    def update_subtasks_exec_ids(self, subtasks: Sequence[SubtaskBase]) -> int:
        """Move subtasks to their new ``exec_id``, each guarded by the state the caller read."""
        if not subtasks:
            return 0

        def txn(conn: Connection) -> int:
            moved = 0
            for s in subtasks:
                moved += conn.execute(
                    update(subtask_table)
                    .where(subtask_table.c.id == s.id, subtask_table.c.state == s.state.value)
                    .values(exec_id=s.exec_id)
                ).rowcount
            return moved

        return self._write(txn)

    def get_all_subtasks_by_step_and_state(self, task_id: int, step: int, state: SubtaskState) -> list[Subtask]:
        stmt = (
            select(subtask_table)
            .where(
                subtask_table.c.task_id == task_id,
                subtask_table.c.step == step,
                subtask_table.c.state == state.value,
            )
            .order_by(subtask_table.c.ordinal)
        )
        return self._read(lambda conn: [_subtask_from_row(r) for r in conn.execute(stmt)])

    def get_subtasks(self, task_id: int, step: int | None = None, *, with_history: bool = True) -> list[Subtask]:
        """Subtasks of a task (live, then history), ordered by step and ordinal."""

        def part(table: Table) -> Select[Any]:
            stmt = select(*table.c).where(table.c.task_id == task_id)
            return stmt.where(table.c.step == step) if step is not None else stmt

        stmt = _live_and_history(part) if with_history else part(subtask_table)

        def txn(conn: Connection) -> list[Subtask]:
            out = [_subtask_from_row(r) for r in conn.execute(stmt)]
            out.sort(key=lambda s: (s.step if s.step >= 0 else 1 << 30, s.ordinal, s.id))
            return out

        return self._read(txn)

    def get_subtasks_with_history(self, task_id: int, step: int) -> list[Subtask]:
        return self.get_subtasks(task_id, step, with_history=True)

    def get_all_subtask_summary_by_step(self, task_id: int, step: int) -> list[dict[str, Any]]:
        """Decoded summaries of the active subtasks of a step."""
        stmt = select(subtask_table.c.summary).where(
            subtask_table.c.task_id == task_id, subtask_table.c.step == step, subtask_table.c.state.in_(_ACTIVE)
        )
        return self._read(lambda conn: [_load_json(r[0]) for r in conn.execute(stmt)])

    def get_subtask_summaries(self, task_id: int, step: int) -> list[dict[str, Any]]:
        """Decoded summaries of every subtask of a step, live and history."""

        stmt = _live_and_history(lambda t: select(t.c.summary).where(t.c.task_id == task_id, t.c.step == step))
        return self._read(lambda conn: [_load_json(r[0]) for r in conn.execute(stmt)])

    def get_subtask_row_count(self, task_id: int, step: int) -> int:
        return sum(int(s.get("row_count", 0) or 0) for s in self.get_subtask_summaries(task_id, step))

    def get_busy_nodes(self) -> list[str]:
        stmt = select(subtask_table.c.exec_id).where(subtask_table.c.state.in_(_ACTIVE)).distinct()
        return self._read(lambda conn: sorted(r[0] for r in conn.execute(stmt)))

    # ------------------------------------------------------------------ history and GC

    def transfer_tasks_to_history(self, tasks: Sequence[Task]) -> int:
        """Move finished tasks (meta as given, e.g. redacted) and their subtasks to history.

        Only tasks still live and done (succeed/reverted/failed) move; the meta update locks
        each row first, so two cleaners racing on the same task move it once. Returns the
        number of tasks moved.
        """
        if not tasks:
            return 0
        metas = {t.id: _check_meta(t.meta) for t in tasks}
        task_cols = [c.name for c in task_table.columns]
        sub_cols = [c.name for c in subtask_table.columns]
        done = _values(TASK_DONE_STATES)

        def txn(conn: Connection) -> int:
            now = utcnow()
            ids = [
                task_id
                for task_id, meta in metas.items()
                if conn.execute(
                    update(task_table)
                    .where(task_table.c.id == task_id, task_table.c.state.in_(done))
                    .values(meta=meta, state_update_time=now)
                ).rowcount
                > 0
            ]
            if not ids:
                return 0
            conn.execute(
                insert(subtask_history_table).from_select(
                    sub_cols, select(*[subtask_table.c[c] for c in sub_cols]).where(subtask_table.c.task_id.in_(ids))
                )
            )
            conn.execute(delete(subtask_table).where(subtask_table.c.task_id.in_(ids)))
            conn.execute(
                insert(task_history_table).from_select(
                    task_cols, select(*[task_table.c[c] for c in task_cols]).where(task_table.c.id.in_(ids))
                )
            )
            return int(conn.execute(delete(task_table).where(task_table.c.id.in_(ids))).rowcount)

        return self._write(txn)

    def gc_subtasks(self, keep_seconds: float = DEFAULT_SUBTASK_KEEP_SECONDS) -> int:
        """Delete subtask history rows last updated more than ``keep_seconds`` ago."""
        cutoff = utcnow() - timedelta(seconds=keep_seconds)
        stmt = delete(subtask_history_table).where(
            or_(
                subtask_history_table.c.state_update_time < cutoff,
                and_(subtask_history_table.c.state_update_time.is_(None), subtask_history_table.c.create_time < cutoff),
            )
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    # ------------------------------------------------------------------ nodes

    def init_meta(self, exec_id: str, role: str = "", cpu_count: int | None = None) -> None:
        """Register (or refresh) this node, updating its CPU count and role."""
        self._upsert_node(exec_id, role, cpu_count, update_role=True)

    def recover_meta(self, exec_id: str, role: str = "", cpu_count: int | None = None) -> None:
        """Re-insert this node if the scheduler removed it; the role of a live row is kept."""
        self._upsert_node(exec_id, role, cpu_count, update_role=False)

    def _upsert_node(self, exec_id: str, role: str, cpu_count: int | None, *, update_role: bool) -> None:
        cpu = cpu_count if cpu_count is not None else (os.cpu_count() or 1)

        def txn(conn: Connection) -> None:
            now = utcnow()
            values: dict[str, Any] = {"cpu_count": cpu, "heartbeat": now}
            if update_role:
                values["role"] = role
            if conn.execute(update(node_table).where(node_table.c.host == exec_id).values(**values)).rowcount == 0:
                conn.execute(insert(node_table).values(host=exec_id, role=role, cpu_count=cpu, heartbeat=now))

        try:
            self._write(txn)
        except sa_exc.IntegrityError:
            # Inserted concurrently by the same node's other loop: the update now matches.
            self._write(txn)

    def heartbeat(self, exec_id: str) -> bool:
        """Touch this node's heartbeat; False when its row is gone (it was deemed dead)."""
        stmt = update(node_table).where(node_table.c.host == exec_id).values(heartbeat=utcnow())
        return bool(self._write(lambda conn: conn.execute(stmt).rowcount))

    def get_all_nodes(self) -> list[ManagedNode]:
        stmt = select(node_table).order_by(node_table.c.host)
        return self._read(
            lambda conn: [ManagedNode(r.host, r.role, r.cpu_count, r.heartbeat) for r in conn.execute(stmt)]
        )

    def get_dead_nodes(self, ttl_seconds: float) -> list[str]:
        """Nodes whose last heartbeat is older than ``ttl_seconds``."""
        cutoff = utcnow() - timedelta(seconds=ttl_seconds)
        stmt = select(node_table.c.host).where(or_(node_table.c.heartbeat < cutoff, node_table.c.heartbeat.is_(None)))
        return self._read(lambda conn: sorted(r[0] for r in conn.execute(stmt)))

    def delete_dead_nodes(self, hosts: Sequence[str]) -> int:
        if not hosts:
            return 0
        stmt = delete(node_table).where(node_table.c.host.in_(list(hosts)))
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def delete_node(self, exec_id: str) -> bool:
        return self.delete_dead_nodes([exec_id]) > 0

    def _cpu_count(self, conn: Connection, role: str | None) -> int | None:
        stmt = select(node_table.c.cpu_count).where(node_table.c.cpu_count > 0).order_by(node_table.c.host).limit(1)
        if role is not None:
            stmt = stmt.where(node_table.c.role == role)
        value = conn.execute(stmt).scalar()
        return int(value) if value is not None else None

    def get_cpu_count_of_node(self, role: str | None = None) -> int | None:
        """CPU count of the first registered node (of ``role`` if given); None with no node."""
        return self._read(lambda conn: self._cpu_count(conn, role))

    # ------------------------------------------------------------------ leases

    def try_acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or extend the lease ``name`` for ``ttl_seconds``; False while someone else holds it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_seconds)

        def txn(conn: Connection) -> bool:
            result = conn.execute(
                update(lease_table)
                .where(lease_table.c.name == name, or_(lease_table.c.owner == owner, lease_table.c.expires_at < now))
                .values(owner=owner, expires_at=expires)
            )
            if result.rowcount > 0:
                return True
            if conn.execute(select(lease_table.c.name).where(lease_table.c.name == name)).first() is not None:
                return False
            conn.execute(insert(lease_table).values(name=name, owner=owner, expires_at=expires))
            return True

        try:
            return self._write(txn)
        except sa_exc.IntegrityError:
            return False

    def release_lease(self, name: str, owner: str) -> None:
        stmt = delete(lease_table).where(lease_table.c.name == name, lease_table.c.owner == owner)
        self._write(lambda conn: conn.execute(stmt))

    def get_lease_owner(self, name: str) -> str | None:
        """The current holder of a lease that has not expired, or None."""
        stmt = select(lease_table.c.owner).where(lease_table.c.name == name, lease_table.c.expires_at >= utcnow())
        return self._read(lambda conn: conn.execute(stmt).scalar())


def _live_and_history(part: Callable[[Table], Select[Any]]) -> CompoundSelect[Any]:
    """The same query over the live subtask table and its history, as ONE statement.

    Two statements would each see their own snapshot under READ COMMITTED, so a transfer to
    history committing between them would show the moved rows twice (or not at all).
    """
    return union_all(part(subtask_table), part(subtask_history_table))


def _load_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
