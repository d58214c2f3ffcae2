"""The fault suite's side table: one row per subtask execution start and per success.

Step code of the ``fault`` task type (``helpers/celery_apps/fault_types.py``) writes here on
its own autocommit connection, so a row survives whatever happens to the subtask's own
transaction, worker or node: a killed worker leaves its ``start`` row, and step code that
ran to its end after its subtask moved away leaves a second ``success`` row. The test reads
the table back and judges (:meth:`Ledger.verdict`): no subtask lost, none of a
non-idempotent task started twice, none succeeded twice.

The ledger's connections call themselves ``APP_NAME`` so that a ``pg_terminate_backend``
storm aimed at the DXF connections can spare them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

#: ``application_name`` of every ledger connection (step code's and the test's).
APP_NAME = "dxf-fault-ledger"

#: How long step code keeps retrying a ledger write while the database is away (a 30 s outage
#: must not lose a row: the write blocks the step code until the server is back).
WRITE_RETRY_FOR = 300.0

_DDL = """
CREATE TABLE IF NOT EXISTS fault_ledger (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    task_id bigint NOT NULL,
    step int NOT NULL,
    ordinal int NOT NULL,
    subtask_id bigint NOT NULL,
    exec_id text NOT NULL,
    pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def conninfo(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


_conn: psycopg.Connection[Any] | None = None
_conn_url = ""


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(url), autocommit=True, application_name=APP_NAME, connect_timeout=5)


def record(url: str, kind: str, task_id: int, step: int, ordinal: int, subtask_id: int, exec_id: str) -> None:
    """Insert one row from step code, reconnecting and retrying while the server is away."""
    global _conn, _conn_url
    deadline = time.monotonic() + WRITE_RETRY_FOR
    while True:
        try:
            if _conn is None or _conn.closed or _conn_url != url:
                _conn = _connect(url)
                _conn_url = url
            _conn.execute(
                "INSERT INTO fault_ledger (kind, task_id, step, ordinal, subtask_id, exec_id, pid)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (kind, task_id, step, ordinal, subtask_id, exec_id, os.getpid()),
            )
            return
        except psycopg.OperationalError:
            if _conn is not None:
                try:
                    _conn.close()
                except Exception:
                    pass
            _conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class TaskFigures:
    """What the ledger and the task table say about one task."""

    task_id: int
    key: str
    idempotent: bool
    expected: int  # steps x subtasks
    state: str
    error: str
    executions: int  # start rows
    never_ran: int  # (step, ordinal) with no start row
    lost: int  # (step, ordinal) with no success row
    double_runs: int  # (step, ordinal) started more than once
    succeeded_twice: int  # (step, ordinal) with more than one success row
    #: The history of each subtask that started more than once, e.g. "1/7: start w1, success w1, start w2, ..."
    repeats: list[str] = field(default_factory=list)

    def line(self) -> str:
        kind = "idempotent" if self.idempotent else "non-idempotent"
        text = (
            f"task {self.task_id} {self.key} ({kind}, {self.expected} subtasks): {self.state}"
            f"{' ' + self.error if self.error else ''}; executions {self.executions}, never ran {self.never_ran},"
            f" lost {self.lost}, started twice {self.double_runs}, succeeded twice {self.succeeded_twice}"
        )
        return text + "".join(f"\n    {r}" for r in self.repeats)


@dataclass
class Verdict:
    tasks: list[TaskFigures] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(t.line() for t in self.tasks)

    def problems(self) -> list[str]:
        """Every breach of "every task succeeds, 0 lost, 0 double runs, no subtask succeeded twice"."""
        found = []
        for t in self.tasks:
            if t.state != "succeed":
                found.append(f"task {t.task_id} ended {t.state} {t.error}".rstrip())
            if t.lost:
                found.append(f"task {t.task_id}: {t.lost} subtasks lost ({t.never_ran} never ran)")
            if not t.idempotent and t.double_runs:
                found.append(f"task {t.task_id}: {t.double_runs} non-idempotent subtasks ran twice")
            if t.succeeded_twice:
                found.append(f"task {t.task_id}: {t.succeeded_twice} subtasks succeeded twice")
        return found

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "; ".join(problems) + "\n" + self.report()


class Ledger:
    """The test's side of the table: create it, read it, judge tasks by it."""

    def __init__(self, url: str) -> None:
        self.url = url
        with _connect(url) as conn:
            conn.execute(_DDL)

    def rows(self, task_id: int) -> list[tuple[str, int, int, str]]:
        """(kind, step, ordinal, exec_id) of every row of ``task_id``, in insertion order."""
        with _connect(self.url) as conn:
            cur = conn.execute(
                "SELECT kind, step, ordinal, exec_id FROM fault_ledger WHERE task_id = %s ORDER BY id", (task_id,)
            )
            return [(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in cur.fetchall()]

    def count(self, kind: str, task_id: int | None = None) -> int:
        with _connect(self.url) as conn:
            if task_id is None:
                cur = conn.execute("SELECT count(*) FROM fault_ledger WHERE kind = %s", (kind,))
            else:
                cur = conn.execute(
                    "SELECT count(*) FROM fault_ledger WHERE kind = %s AND task_id = %s", (kind, task_id)
                )
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def figures(
        self, task_id: int, key: str, *, idempotent: bool, steps: int, subtasks: int, state: str, error: str
    ) -> TaskFigures:
        rows = self.rows(task_id)
        starts = Counter((s, o) for kind, s, o, _ in rows if kind == "start")
        successes = Counter((s, o) for kind, s, o, _ in rows if kind == "success")
        expected = {(s, o) for s in range(1, steps + 1) for o in range(1, subtasks + 1)}
        repeats = [
            f"{s}/{o}: " + ", ".join(f"{kind} {node.split('@')[0]}" for kind, *at, node in rows if tuple(at) == (s, o))
            for (s, o), n in sorted(starts.items())
            if n > 1
        ]
        return TaskFigures(
            task_id=task_id,
            key=key,
            idempotent=idempotent,
            expected=len(expected),
            state=state,
            error=error,
            executions=sum(starts.values()),
            never_ran=len(expected - set(starts)),
            lost=len(expected - set(successes)),
            double_runs=sum(1 for n in starts.values() if n > 1),
            succeeded_twice=sum(1 for n in successes.values() if n > 1),
            repeats=repeats,
        )
