"""SQL side of the import example: the target table and the per-chunk writes (SQLAlchemy Core).

Every imported row carries the DXF task id and its chunk ordinal, so a chunk can be replaced
in one transaction (delete that chunk's rows, insert them again: a re-run after a crash
gives the same table) and a reverted task can remove exactly its own rows. This is
application SQL in an example task type, not framework SQL, which all lives in
``dxf_celery.storage``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    func,
    inspect,
    select,
)
from sqlalchemy.types import TypeEngine

from dxf_celery.context import Context
from dxf_celery.examples import csvdata
from dxf_celery.examples.csvdata import ChunkStats, Value
from dxf_celery.storage.engine import build_engines

TASK_COLUMN = "_dxf_task"
CHUNK_COLUMN = "_dxf_chunk"
#: Rows sent per INSERT; the context is checked between batches so a cancel stops the chunk.
INSERT_BATCH = 1000

_SQL_TYPES: dict[str, Callable[[], TypeEngine[Any]]] = {"int": BigInteger, "float": Double, "text": Text}


class TargetTableError(csvdata.CSVFormatError):
    """The target table exists with other columns than the CSV's."""


def build_table(name: str, columns: Sequence[csvdata.Column]) -> Table:
    """The target table: the CSV's columns plus the task id and chunk ordinal."""
    if not csvdata.is_identifier(name):
        raise TargetTableError(
            f"table name {name!r} is not a plain SQL identifier; use letters, digits and _ (at most 63 characters)"
        )
    md = MetaData()
    cols: list[Column[object]] = [Column(c.name, _SQL_TYPES[c.type](), nullable=True) for c in columns]
    table = Table(
        name,
        md,
        Column(TASK_COLUMN, BigInteger(), nullable=False),
        Column(CHUNK_COLUMN, Integer(), nullable=False),
        *cols,
    )
    Index(f"ix_{name}_dxf_chunk"[:63], table.c[TASK_COLUMN], table.c[CHUNK_COLUMN])
    return table


def ensure_table(engine: Engine, table: Table) -> None:
    """Create the table, or check that an existing one has the expected columns."""
    insp = inspect(engine)
    if insp.has_table(table.name):
        have = [c["name"] for c in insp.get_columns(table.name)]
        want = [c.name for c in table.columns]
        if [h.lower() for h in have] != [w.lower() for w in want]:
            raise TargetTableError(
                f"table {table.name!r} exists with columns {have}, but this CSV needs {want}; "
                f"pick another table name or drop the old table"
            )
        return
    table.metadata.create_all(engine, checkfirst=True)


def replace_chunk(
    engine: Engine,
    table: Table,
    task_id: int,
    ordinal: int,
    rows: Iterable[Sequence[Value]],
    ctx: Context,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete the chunk's rows and insert ``rows`` in one transaction; returns the rows written.

    ``on_batch(n)`` (if callable) is told after every batch, for live progress.
    """
    names = [c.name for c in table.columns][2:]
    written = 0
    with engine.begin() as conn:
        conn.execute(delete(table).where(table.c[TASK_COLUMN] == task_id, table.c[CHUNK_COLUMN] == ordinal))
        batch: list[dict[str, object]] = []
        for row in rows:
            record: dict[str, object] = dict(zip(names, row, strict=True))
            record[TASK_COLUMN] = task_id
            record[CHUNK_COLUMN] = ordinal
            batch.append(record)
            if len(batch) >= INSERT_BATCH:
                ctx.check()
                conn.execute(table.insert(), batch)
                written += len(batch)
                batch = []
                if on_batch is not None:
                    on_batch(written)
        ctx.check()
        if batch:
            conn.execute(table.insert(), batch)
            written += len(batch)
            if on_batch is not None:
                on_batch(written)
    return written


def chunk_stats(engine: Engine, table: Table, task_id: int, ordinal: int) -> ChunkStats:
    """Row count and checksum recomputed from what the table holds for one chunk."""
    cols = [c for c in table.columns][2:]
    stmt = select(*cols).where(table.c[TASK_COLUMN] == task_id, table.c[CHUNK_COLUMN] == ordinal)
    with engine.connect() as conn:
        return csvdata.stats_of(tuple(r) for r in conn.execute(stmt))


def count_task_rows(engine: Engine, table: Table, task_id: int) -> int:
    stmt = select(func.count()).select_from(table).where(table.c[TASK_COLUMN] == task_id)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def delete_task_rows(engine: Engine, table: Table, task_id: int) -> int:
    """Remove every row a task imported (used when the task reverts)."""
    if not inspect(engine).has_table(table.name):
        return 0
    with engine.begin() as conn:
        return int(conn.execute(delete(table).where(table.c[TASK_COLUMN] == task_id)).rowcount)


@dataclass(frozen=True)
class Target:
    """Where rows land: a read engine and a write engine (distinct only on SQLite)."""

    read: Engine
    write: Engine


#: Engines by (pid, url). A forked child builds its own; the parent's stay referenced so that
#: garbage collection in the child never closes sockets the parent still uses.
_targets: dict[tuple[int, str], Target] = {}
_targets_lock = threading.Lock()


def target_for(url: str) -> Target:
    """One pair of engines per target URL per process, tuned like dxf's own (WAL on SQLite)."""
    key = (os.getpid(), url)
    with _targets_lock:
        target = _targets.get(key)
        if target is None:
            read, write = build_engines(url)
            target = _targets[key] = Target(read, write)
        return target


def dispose_targets() -> None:
    """Close pooled connections of every target engine (before fork, at shutdown, in tests)."""
    pid = os.getpid()
    with _targets_lock:
        targets = [t for (owner, _), t in _targets.items() if owner == pid]
        for key in [k for k in _targets if k[0] == pid]:
            del _targets[key]
    for t in targets:
        t.read.dispose()
        if t.write is not t.read:
            t.write.dispose()
