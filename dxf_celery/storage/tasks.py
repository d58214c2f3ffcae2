"""Tasks: create and read (live rows, history, rank order, what a node should run)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, Table, case, func, literal, select, union_all
from sqlalchemy import exc as sa_exc

from dxf_celery.errors import InvalidTaskError, TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.proto import (
    DEFAULT_LIST_LIMIT,
    EMPTY_META,
    MAX_CONCURRENT_TASKS,
    NO_RESOURCE_TASK_STATES,
    NORMAL_PRIORITY,
    STEP_INIT,
    UNFINISHED_TASK_STATES,
    ExtraParams,
    Task,
    TaskBase,
    TaskExecInfo,
    TaskState,
    validate_priority,
)
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.rows import (
    ACTIVE,
    TASK_BASE_COLUMNS,
    check_meta,
    task_base_from_row,
    task_from_row,
    values_of,
)
from dxf_celery.storage.submit import CreatedTask, insert_task
from dxf_celery.storage.tables import subtask_table, task_history_table, task_table

#: Longest task key the table holds.
MAX_KEY_LENGTH = 256
#: Longest task type and target scope the table holds.
MAX_TYPE_LENGTH = 256
MAX_SCOPE_LENGTH = 256

#: The task states a node runs subtasks for (``get_task_exec_info_by_exec_id``).
_EXEC_STATES = values_of((TaskState.RUNNING, TaskState.REVERTING, TaskState.PAUSING))

_Where = Callable[[Table], Any]


def rank(table: Table) -> tuple[Any, ...]:
    """DXF's rank order: priority, then age, then id (smaller first)."""
    return (table.c.priority, table.c.create_time, table.c.id)


def _validate_new_task(key: str, task_type: str, concurrency: int, target_scope: str, max_node_count: int) -> None:
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


class TaskReads(StorageBase):
    """Create a task; read tasks one at a time, by state, in rank order, or for a node."""

    def submit_new_task(
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
    ) -> CreatedTask:
        """Insert a pending task; return it as stored, with what the node table said.

        One transaction of two statements (one check, one ``INSERT .. RETURNING``), because
        submit is the hot path of queue users. ``create_time`` is the database's clock: it
        breaks rank ties, and client clocks disagree. With no node registered the task is
        accepted and waits, because queue users submit while workers are down; with nodes,
        ``concurrency`` must fit one node's CPU count.
        """
        _validate_new_task(key, task_type, concurrency, target_scope, max_node_count)
        try:
            validate_priority(priority)
        except ValueError as err:
            raise InvalidTaskError(str(err)) from None
        meta = check_meta(meta)
        if extra_params is not None and not isinstance(extra_params, ExtraParams):
            raise InvalidTaskError(
                f"extra_params must be a dxf_celery.proto.ExtraParams, got {type(extra_params).__name__}"
            )
        params = extra_params or ExtraParams()
        values: dict[str, Any] = {
            "task_key": key,
            "type": task_type,
            "state": TaskState.PENDING.value,
            "step": STEP_INIT,
            "priority": priority,
            "concurrency": concurrency,
            "target_scope": target_scope,
            "max_node_count": max_node_count,
            "extra_params": params.to_json(),
            "meta": meta,
        }
        try:
            return self._write(lambda conn: insert_task(conn, values))
        except sa_exc.IntegrityError:
            raise TaskAlreadyExistsError(f"task key {key!r} exists already; pick a new key") from None

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
        """Insert a pending task and return its id (see :meth:`submit_new_task`)."""
        created = self.submit_new_task(
            key,
            task_type,
            concurrency,
            target_scope=target_scope,
            max_node_count=max_node_count,
            extra_params=extra_params,
            meta=meta,
            priority=priority,
        )
        return created.task.id

    def _get_one_task(self, where: _Where, *, with_history: bool) -> Task:
        tables = (task_table, task_history_table) if with_history else (task_table,)

        def txn(conn: Connection) -> Task:
            for table in tables:
                row = conn.execute(select(table).where(where(table))).first()
                if row is not None:
                    return task_from_row(row)
            raise TaskNotFoundError()

        return self._read(txn)

    def get_task_by_id(self, task_id: int) -> Task:
        """The full live task; :class:`TaskNotFoundError` when there is none."""
        return self._get_one_task(lambda t: t.c.id == task_id, with_history=False)

    def get_task_by_key(self, key: str) -> Task:
        return self._get_one_task(lambda t: t.c.task_key == key, with_history=False)

    def get_task_by_id_with_history(self, task_id: int) -> Task:
        """The task live or, once finished and moved, from history (ids are never reused)."""
        return self._get_one_task(lambda t: t.c.id == task_id, with_history=True)

    def get_task_by_key_with_history(self, key: str) -> Task:
        return self._get_one_task(lambda t: t.c.task_key == key, with_history=True)

    def get_task_base_by_id(self, task_id: int) -> TaskBase:
        """The light columns of a live task (what a scheduler pass re-reads)."""
        cols = [task_table.c[c] for c in TASK_BASE_COLUMNS]

        def txn(conn: Connection) -> TaskBase:
            row = conn.execute(select(*cols).where(task_table.c.id == task_id)).first()
            if row is None:
                raise TaskNotFoundError()
            return task_base_from_row(row)

        return self._read(txn)

    def get_tasks_in_states(self, *states: TaskState | str) -> list[Task]:
        """Full live tasks in any of ``states``, in rank order; no state → empty list."""
        if not states:
            return []
        stmt = select(task_table).where(task_table.c.state.in_(values_of(states))).order_by(*rank(task_table))
        return self._read(lambda conn: [task_from_row(r) for r in conn.execute(stmt)])

    def get_all_tasks(self) -> list[TaskBase]:
        cols = [task_table.c[c] for c in TASK_BASE_COLUMNS]
        stmt = select(*cols).order_by(*rank(task_table))
        return self._read(lambda conn: [task_base_from_row(r) for r in conn.execute(stmt)])

    def get_top_unfinished_tasks(self, limit: int = 2 * MAX_CONCURRENT_TASKS) -> list[TaskBase]:
        """Unfinished tasks in rank order, at most ``limit`` (DXF: 32)."""
        return self._top_tasks(UNFINISHED_TASK_STATES, limit)

    def get_top_no_need_resource_tasks(self, limit: int = 2 * MAX_CONCURRENT_TASKS) -> list[TaskBase]:
        """Tasks whose scheduler needs no slots (cancel, pause, revert, modify), in rank order."""
        return self._top_tasks(NO_RESOURCE_TASK_STATES, limit)

    def _top_tasks(self, states: Iterable[TaskState], limit: int) -> list[TaskBase]:
        cols = [task_table.c[c] for c in TASK_BASE_COLUMNS]
        stmt = select(*cols).where(task_table.c.state.in_(values_of(states))).order_by(*rank(task_table)).limit(limit)
        return self._read(lambda conn: [task_base_from_row(r) for r in conn.execute(stmt)])

    def list_tasks(
        self,
        states: Sequence[TaskState | str] | None = None,
        *,
        with_history: bool = True,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[Task]:
        """Live tasks in rank order, then finished ones from history, newest first; optionally by state.

        Newest first in history so a small ``limit`` shows the latest finished tasks, not the oldest.
        """

        def part(table: Table, source: int) -> Select[Any]:
            stmt = select(literal(source).label("source"), *table.c)
            return stmt.where(table.c.state.in_(values_of(states))) if states else stmt

        tables = [task_table, task_history_table] if with_history else [task_table]
        rows = union_all(*(part(t, i) for i, t in enumerate(tables))).subquery()
        live = rows.c.source == 0
        stmt = (
            select(rows)
            .order_by(
                rows.c.source,
                case((live, rows.c.priority), else_=0),
                case((live, rows.c.create_time), else_=None),
                case((live, rows.c.id), else_=-rows.c.id),  # ids only grow: history newest first
            )
            .limit(limit)
        )
        return self._read(lambda conn: [task_from_row(r) for r in conn.execute(stmt)])

    def count_tasks(
        self,
        states: Sequence[TaskState | str],
        *,
        min_id: int | None = None,
        max_id: int | None = None,
        with_history: bool = True,
    ) -> int:
        """How many tasks (live and, by default, moved to history) are in ``states``, ids in a range.

        One statement, so a watcher of many tasks (the bench's tiny-tasks row) polls with one
        query instead of one per task.
        """

        def part(table: Table) -> Select[Any]:
            where: list[ColumnElement[bool]] = [table.c.state.in_(values_of(states))]
            if min_id is not None:
                where.append(table.c.id >= min_id)
            if max_id is not None:
                where.append(table.c.id <= max_id)
            return select(func.count().label("n")).where(*where)

        tables = [task_table, task_history_table] if with_history else [task_table]
        parts = union_all(*(part(t) for t in tables)).subquery()
        stmt = select(func.coalesce(func.sum(parts.c.n), 0))
        return self._read(lambda conn: int(conn.execute(stmt).scalar_one()))

    def get_task_exec_info_by_exec_id(self, exec_id: str) -> list[TaskExecInfo]:
        """Tasks with runnable subtasks on ``exec_id`` in running/reverting/pausing, in rank order."""

        def txn(conn: Connection) -> list[TaskExecInfo]:
            rows = conn.execute(
                select(subtask_table.c.task_id, func.max(subtask_table.c.concurrency))
                .where(subtask_table.c.exec_id == exec_id, subtask_table.c.state.in_(ACTIVE))
                .group_by(subtask_table.c.task_id)
            ).all()
            if not rows:
                return []
            concurrency = {r[0]: r[1] for r in rows}
            cols = [task_table.c[c] for c in TASK_BASE_COLUMNS]
            tasks = conn.execute(
                select(*cols)
                .where(task_table.c.id.in_(list(concurrency)), task_table.c.state.in_(_EXEC_STATES))
                .order_by(*rank(task_table))
            ).all()
            return [TaskExecInfo(task_base_from_row(t), concurrency[t.id]) for t in tasks]

        return self._read(txn)
