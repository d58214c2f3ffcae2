"""The executor's subtask protocol: claim-and-start, and finish-and-claim-next, in few round trips.

One :class:`SubtaskClaims` per task executor holds one connection (no pool checkout and
pre-ping per statement; a broken connection is dropped and reopened on the next call). A
claim starts the lowest pending subtask of ``(task, node, step)`` only while the task is
still runnable at that step, and returns the task's cheap fingerprint (state, concurrency,
state-update time) so the executor learns of modifications without reading the task:

- PostgreSQL: one autocommit statement; finish and next claim are one statement too (the
  finish is a data-modifying CTE of the claim). ``FOR UPDATE SKIP LOCKED`` keeps two
  claimers off each other's row.
- SQLite: one ``BEGIN IMMEDIATE`` transaction (one writer at a time) with ``RETURNING``.
- MariaDB/MySQL (no ``UPDATE ... RETURNING``): finish and claim-next as one autocommit
  ``UPDATE`` of two rows that hands the claimed id back through ``LAST_INSERT_ID(id)`` in the
  OK packet, then one read of that row (:mod:`.claims_mysql`); InnoDB's row lock and the
  ``state = 'pending'`` re-check serialise two claimers.

Every write keeps the guards of :mod:`.executor_subtasks`: keyed by ``(id, exec_id)``,
start only from ``pending``, times from the database server's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Integer, bindparam, exists, func, literal, select, text, tuple_, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import TextClause, Update
from sqlalchemy.sql.elements import BindParameter

from dxf_celery.proto import SubtaskClaim, SubtaskFinish, SubtaskState, TaskState
from dxf_celery.storage import claims_mysql
from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import server_now
from dxf_celery.storage.engine import DEADLOCK_RETRIES, is_deadlock, is_memory_sqlite, translated_errors
from dxf_celery.storage.rows import check_meta, subtask_from_row
from dxf_celery.storage.tables import ACTIVE_PREDICATE, Blob, LongText, subtask_table, task_table

T = TypeVar("T")

#: Task states in which an executor may start subtasks.
RUNNABLE_TASK_STATES = claims_mysql.RUNNABLE_TASK_STATES

_s = subtask_table
_t = task_table


def _task_value(column: Any) -> Any:
    return select(column).where(_t.c.id == bindparam("b_task_id")).scalar_subquery()


def _finish_statement() -> Update:
    """Succeed one subtask with its meta (and final summary, when given), keyed by id and exec_id,
    only while it is still running there."""
    now = server_now()
    return (
        update(_s)
        .where(
            _s.c.id == bindparam("b_prev_id"),
            _s.c.exec_id == bindparam("b_exec_id"),
            # Self-fencing: a row that moved or was settled meanwhile keeps what others wrote.
            _s.c.state == SubtaskState.RUNNING.value,
        )
        .values(
            meta=bindparam("b_meta", type_=Blob),
            summary=func.coalesce(bindparam("b_summary", type_=LongText), _s.c.summary),
            state=SubtaskState.SUCCEED.value,
            state_update_time=now,
            end_time=now,
        )
    )


def _claim_statement(*, keyset: bool) -> Update:
    """``UPDATE ... WHERE id = (lowest pending, skip locked) AND state = 'pending' RETURNING``,
    only while the task is runnable at the step.

    Both forms repeat the partial index's predicate, so the planner may use the claim index.
    ``keyset`` (PostgreSQL) picks the row as the first entry at or after ``(task, node, step,
    'pending')`` in the order of ``ix_dxf_subtask_claim``, the one index that gives that order:
    with equalities instead, the planner's choice follows the statistics, and right after a
    big step is planned (no ANALYZE yet) it sorted the node's 50,000 pending rows per claim;
    with statistics it walked the primary key past every finished row. The entry found may
    be of another group (none pending here): the outer ``WHERE`` then matches nothing.
    """
    step: BindParameter[int] = bindparam("b_step", type_=Integer)
    runnable = exists().where(
        _t.c.id == bindparam("b_task_id"), _t.c.state.in_(RUNNABLE_TASK_STATES), _t.c.step == step
    )
    pending = SubtaskState.PENDING.value
    if keyset:
        group = (_s.c.task_id, _s.c.exec_id, _s.c.step, _s.c.state)
        mine: tuple[Any, ...] = (bindparam("b_task_id"), bindparam("b_exec_id"), step, literal(pending))
        where: tuple[Any, ...] = (
            tuple_(*group, _s.c.id) > tuple_(*mine, literal(0)),
            tuple_(*group) <= tuple_(*mine),
            text(ACTIVE_PREDICATE),
            runnable,
        )
        order: tuple[Any, ...] = (*group, _s.c.id)
    else:
        where = (
            _s.c.task_id == bindparam("b_task_id"),
            _s.c.exec_id == bindparam("b_exec_id"),
            _s.c.step == step,
            _s.c.state == pending,
            text(ACTIVE_PREDICATE),
            runnable,
        )
        order = (_s.c.id,)
    pick = select(_s.c.id).where(*where).order_by(*order).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    now = server_now()
    # The guards stay on the update itself (a fault run showed a subtask claimed twice without
    # them). On PostgreSQL they are written through coalesce() so no (exec_id, state) index is a
    # candidate: without statistics the planner found the row through one and filtered 50,000.
    if keyset:
        guards: tuple[Any, ...] = (
            func.coalesce(_s.c.exec_id, "") == bindparam("b_exec_id"),
            func.coalesce(_s.c.state, "") == pending,
        )
    else:
        guards = (_s.c.exec_id == bindparam("b_exec_id"), _s.c.state == pending)
    return (
        update(_s)
        .where(_s.c.id == pick, *guards)
        .values(state=SubtaskState.RUNNING.value, start_time=now, state_update_time=now)
        .returning(
            *_s.c,
            _task_value(_t.c.state).label("task_state"),
            _task_value(_t.c.concurrency).label("task_concurrency"),
            _task_value(_t.c.state_update_time).label("task_stamp"),
        )
    )


# Built once: SQLAlchemy caches their compiled form, so a claim costs no statement building.
_FINISH = _finish_statement()
_CLAIM = _claim_statement(keyset=True)
_CLAIM_SQLITE = _claim_statement(keyset=False)
#: PostgreSQL: the finish as a data-modifying CTE of the claim (run exactly once, referenced or not).
_FINISH_AND_CLAIM = _CLAIM.add_cte(_FINISH.returning(_s.c.id).cte("dxf_finished"))


class SubtaskClaims:
    """The claim/finish calls of one executor (one task on one node), on one held connection."""

    def __init__(self, storage: StorageBase, exec_id: str, task_id: int) -> None:
        self._storage = storage
        self._engine: Engine = storage.write_engine
        self.exec_id = exec_id
        self.task_id = task_id
        name = self._engine.dialect.name
        self._kind = "mysql" if name in ("mysql", "mariadb") else name
        # ``sqlite://`` is one connection shared by every thread: never hold it.
        self._hold = not is_memory_sqlite(self._engine)
        self._conn: Connection | None = None
        self._mysql_claim: TextClause | None = None
        self._mysql_finish_claim: TextClause | None = None

    # ------------------------------------------------------------------ public calls

    def claim(self, step: int) -> SubtaskClaim | None:
        """Start the lowest pending subtask of this node, task and step; None when none is
        pending or the task is no longer runnable at ``step``."""
        return self.finish_and_claim(None, step)

    def finish_and_claim(self, finish: SubtaskFinish | None, step: int | None) -> SubtaskClaim | None:
        """Mark ``finish`` succeeded (keyed by id and exec_id) and, unless ``step`` is None,
        claim the next subtask of ``step``; one statement on PostgreSQL."""
        if finish is not None:
            finish.meta = check_meta(finish.meta, "subtask meta")
        if self._kind == "postgresql":
            return self._run(lambda conn: self._pg(conn, finish, step))
        if self._kind == "mysql":
            return self._run(lambda conn: self._mysql(conn, finish, step))
        return self._run(lambda conn: self._sqlite(conn, finish, step))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a dead connection cannot be closed cleanly: drop it
                pass

    # ------------------------------------------------------------------ statements

    def _params(self, finish: SubtaskFinish | None, step: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"b_task_id": self.task_id, "b_exec_id": self.exec_id, "b_step": step}
        if finish is not None:
            params.update(b_prev_id=finish.subtask_id, b_meta=finish.meta, b_summary=finish.summary)
        return params

    def _pg(self, conn: Connection, finish: SubtaskFinish | None, step: int | None) -> SubtaskClaim | None:
        params = self._params(finish, step)
        if step is None:
            if finish is not None:
                conn.execute(_FINISH, params)
            return None
        return _claim_from_row(conn.execute(_CLAIM if finish is None else _FINISH_AND_CLAIM, params).first())

    def _sqlite(self, conn: Connection, finish: SubtaskFinish | None, step: int | None) -> SubtaskClaim | None:
        with conn.begin():  # BEGIN IMMEDIATE: the one writer
            params = self._params(finish, step)
            if finish is not None:
                conn.execute(_FINISH, params)
            if step is None:
                return None
            return _claim_from_row(conn.execute(_CLAIM_SQLITE, params).first())

    def _mysql(self, conn: Connection, finish: SubtaskFinish | None, step: int | None) -> SubtaskClaim | None:
        # Autocommit statements: one log flush per statement, no BEGIN/COMMIT round trips.
        if step is None:
            if finish is not None:
                conn.execute(_FINISH, self._params(finish, step))
            return None
        claimed = 0
        if finish is not None:
            if self._mysql_finish_claim is None:
                self._mysql_finish_claim = claims_mysql.finish_and_claim_text(conn)
            params = claims_mysql.finish_params(self.task_id, self.exec_id, step, finish)
            claimed = conn.execute(self._mysql_finish_claim, params).lastrowid or 0
        if not claimed:  # a plain claim, or the lowest id went to another claimer, or none is pending
            if self._mysql_claim is None:
                self._mysql_claim = claims_mysql.claim_text(conn)
            result = conn.execute(self._mysql_claim, claims_mysql.claim_params(self.task_id, self.exec_id, step))
            claimed = (result.lastrowid or 0) if result.rowcount else 0
        if not claimed:
            return None
        return _claim_from_row(conn.execute(claims_mysql.CLAIMED_ROW, {"b_id": claimed}).first())

    # ------------------------------------------------------------------ connection

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect()
            if self._kind in ("postgresql", "mysql"):  # one statement at a time: no transaction to open
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    def _run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on the held connection: replayed on a deadlock (its transaction was rolled
        back whole), the connection replaced after any other driver error."""
        url = self._storage.url
        password = self._engine.url.password
        delay = 0.005
        with self._storage._lock, translated_errors(url, password if isinstance(password, str) else None):
            for attempt in range(DEADLOCK_RETRIES):
                conn = self._connection()
                try:
                    if self._kind == "sqlite" and conn.in_transaction():
                        conn.rollback()  # left open by a caller that borrowed the connection
                    return fn(conn)
                except sa_exc.DBAPIError as err:
                    if is_deadlock(err) and not err.connection_invalidated and attempt < DEADLOCK_RETRIES - 1:
                        time.sleep(delay)
                        delay = min(delay * 2, 0.2)
                        continue
                    self.close()
                    raise
                finally:
                    if not self._hold:
                        self.close()
            raise AssertionError("unreachable")  # pragma: no cover


def _claim_from_row(row: Any) -> SubtaskClaim | None:
    if row is None:
        return None
    m = row._mapping
    return SubtaskClaim(
        subtask=subtask_from_row(row),
        task_state=TaskState(m["task_state"]),
        task_concurrency=int(m["task_concurrency"]),
        task_stamp=m["task_stamp"],
    )


__all__ = ["RUNNABLE_TASK_STATES", "SubtaskClaims"]
