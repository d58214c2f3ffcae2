"""``csv_import``: a real two-step task type, a parallel CSV import checked by a verification.

Step 1, IMPORT: the scheduler cuts the CSV into byte ranges (one subtask per range); each
subtask parses its range and replaces that chunk's rows in the target table in one
transaction (so running it twice gives the same table: it is idempotent) and rewrites its
meta with the row count and checksum it imported.

Step 2, VERIFY: one subtask per chunk re-reads the chunk from the CSV and from the table and
compares both with what step 1 recorded, plus one subtask that counts every row of the task.
A difference is a non-retryable :class:`VerifyMismatchError`: the task reverts, and reverting
(``on_done``) deletes the rows the task imported.

Both steps opt in to parallel subtasks (``allows_parallel_subtasks``): each node runs up to
the task's ``concurrency`` chunks at once, one step executor per lane.

Task meta (JSON)::

    {"csv_path": "/data/orders.csv", "table": "orders",
     "database_url": null,          # null: the dxf database itself
     "chunk_rows": 10000,           # about this many lines per subtask
     "columns": [{"name": "id", "type": "int"}, ...]}   # optional; default: header, all text

Import :mod:`dxf_celery.examples.csv_import` and call :func:`register` (the demo app does)
on every worker and wherever the scheduler pass runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from dxf_celery.context import Context
from dxf_celery.errors import DXFError
from dxf_celery.examples import csvdata, csvtable
from dxf_celery.examples.csvdata import Chunk, ChunkStats, Column
from dxf_celery.examples.csvtable import Target
from dxf_celery.proto import (
    STEP_DONE,
    STEP_INIT,
    Modification,
    ModificationType,
    Subtask,
    Task,
    TaskBase,
    TaskState,
)
from dxf_celery.scheduler import interfaces as sched
from dxf_celery.scheduler.base_scheduler import BaseScheduler
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.scheduler.register import register_cleanup_routine, register_scheduler_factory
from dxf_celery.storage.engine import is_transient_error, safe_url
from dxf_celery.taskexecutor import BaseTaskExecutor
from dxf_celery.taskexecutor.execute import BaseStepExecutor, StepExecutor, SubtaskSummary
from dxf_celery.taskexecutor.interfaces import Extension as ExecutorExtension
from dxf_celery.taskexecutor.param import Param as ExecutorParam
from dxf_celery.taskexecutor.register import register_task_type

logger = logging.getLogger(__name__)

TASK_TYPE = "csv_import"
STEP_IMPORT = 1
STEP_VERIFY = 2
STEP_NAMES = {STEP_INIT: "init", STEP_IMPORT: "import", STEP_VERIFY: "verify", STEP_DONE: "done"}
#: Default number of CSV lines per import subtask.
DEFAULT_CHUNK_ROWS = 10_000
#: Ordinal-less marker of the verification subtask that counts every row of the task.
TOTAL_CHECK = "total"


class InvalidImportMetaError(DXFError):
    """The task meta is not a valid csv_import meta; the message says which field to fix."""


class VerifyMismatchError(DXFError):
    """What the table holds differs from the CSV: the import is not trusted and the task reverts."""


@dataclass
class ImportMeta:
    """The task meta of a csv_import task."""

    csv_path: str
    table: str
    database_url: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    columns: list[Column] = field(default_factory=list)
    #: Bytes of CSV per second each import subtask may write (0 = unlimited); modifiable live.
    max_write_speed: int = 0

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "csv_path": self.csv_path,
            "table": self.table,
            "database_url": self.database_url,
            "chunk_rows": self.chunk_rows,
        }
        if self.max_write_speed:
            data["max_write_speed"] = self.max_write_speed
        if self.columns:
            data["columns"] = [{"name": c.name, "type": c.type} for c in self.columns]
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> ImportMeta:
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise InvalidImportMetaError(
                f"csv_import meta is not JSON ({err}); see dxf_celery.examples.csv_import for its fields"
            ) from None
        if not isinstance(data, dict):
            raise InvalidImportMetaError("csv_import meta must be a JSON object with csv_path and table")
        csv_path, table = data.get("csv_path"), data.get("table")
        if not isinstance(csv_path, str) or not csv_path:
            raise InvalidImportMetaError(
                "csv_import meta needs 'csv_path': the path of the CSV file, readable by every worker"
            )
        if not isinstance(table, str) or not csvdata.is_identifier(table):
            raise InvalidImportMetaError(
                f"csv_import meta needs 'table': a plain SQL table name (letters, digits, _), got {table!r}"
            )
        url = data.get("database_url")
        if url is not None and (not isinstance(url, str) or not url):
            raise InvalidImportMetaError("'database_url' must be a SQLAlchemy URL string, or null for the dxf database")
        chunk_rows = data.get("chunk_rows", DEFAULT_CHUNK_ROWS)
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise InvalidImportMetaError(f"'chunk_rows' must be an int >= 1, got {chunk_rows!r}")
        speed = data.get("max_write_speed", 0)
        if isinstance(speed, bool) or not isinstance(speed, int) or speed < 0:
            raise InvalidImportMetaError(
                f"'max_write_speed' must be an int >= 0 (bytes/s, 0 = unlimited), got {speed!r}"
            )
        columns: list[Column] = []
        for spec in data.get("columns") or []:
            if not isinstance(spec, dict) or "name" not in spec:
                raise InvalidImportMetaError(f"each of 'columns' must be {{'name': ..., 'type': ...}}, got {spec!r}")
            columns.append(Column(str(spec["name"]), str(spec.get("type", "text"))))
        return cls(csv_path, table, url, chunk_rows, columns, speed)


def build_meta(
    csv_path: str | os.PathLike[str],
    table: str,
    *,
    database_url: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    columns: Sequence[Column] | None = None,
    max_write_speed: int = 0,
) -> bytes:
    """The task meta to submit, validated (so a typo fails here, not on a worker)."""
    meta = ImportMeta(os.fspath(csv_path), table, database_url, chunk_rows, list(columns or []), max_write_speed)
    return ImportMeta.from_json(meta.to_json()).to_json()


@dataclass(frozen=True)
class ChunkMeta:
    """Meta of one subtask: the byte range and, once imported, what it held."""

    ordinal: int
    offset: int
    length: int
    rows: int | None = None
    checksum: str | None = None

    @property
    def chunk(self) -> Chunk:
        return Chunk(self.ordinal, self.offset, self.length)

    def to_json(self, **extra: Any) -> bytes:
        data: dict[str, Any] = {"ordinal": self.ordinal, "offset": self.offset, "length": self.length}
        if self.rows is not None:
            data["rows"] = self.rows
            data["checksum"] = self.checksum
        data.update(extra)
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ChunkMeta:
        data = json.loads(raw)
        rows, checksum = data.get("rows"), data.get("checksum")
        return cls(int(data["ordinal"]), int(data["offset"]), int(data["length"]), rows, checksum)


def _default_target(engine_owner: object) -> Target | None:
    """The dxf database's engines when the storage object exposes them (TaskManager does)."""
    read = getattr(engine_owner, "read_engine", None)
    write = getattr(engine_owner, "write_engine", None)
    if isinstance(read, Engine) and isinstance(write, Engine):
        return Target(read, write)
    return None


def resolve_target(meta: ImportMeta, default: Target | None) -> Target:
    if meta.database_url:
        return csvtable.target_for(meta.database_url)
    if default is None:
        raise InvalidImportMetaError("csv_import meta has no 'database_url' and the dxf database is not reachable here")
    return default


# ---------------------------------------------------------------------------- executor side


class _CsvStepExecutor(BaseStepExecutor):
    """What both steps hold: the task's parsed meta, the target database and table, a summary."""

    def __init__(self, task: Task, meta: ImportMeta, target: Target) -> None:
        self.task = task
        self.meta = meta
        self.target = target
        self.summary = SubtaskSummary()
        self.table = csvtable.build_table(meta.table, meta.columns)

    def realtime_summary(self) -> SubtaskSummary:
        return self.summary

    def reset_summary(self) -> None:
        self.summary.reset()


class ImportStepExecutor(_CsvStepExecutor):
    """Step 1: parse one chunk and replace its rows in the target table."""

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        chunk = ChunkMeta.from_json(subtask.meta)
        # Parse first: a bad line fails the subtask before the table is touched.
        rows = list(csvdata.read_chunk(self.meta.csv_path, chunk.chunk, self.meta.columns))
        stats = csvdata.stats_of(rows)
        self.summary.add(read_bytes=chunk.length)
        self._throttle(ctx, chunk.length)
        reported = 0

        def on_batch(written: int) -> None:
            nonlocal reported
            self.summary.add(rows=written - reported)
            reported = written

        table, task_id = self.table, self.task.id
        written = csvtable.replace_chunk(self.target.write, table, task_id, chunk.ordinal, rows, ctx, on_batch)
        self.summary.add(bytes=chunk.length)
        assert written == stats.rows
        subtask.meta = ChunkMeta(chunk.ordinal, chunk.offset, chunk.length, stats.rows, stats.checksum_hex).to_json()

    def _throttle(self, ctx: Context, nbytes: int) -> None:
        """Honour ``max_write_speed`` by waiting before the write transaction (never holding a lock).

        The wait re-reads the limit every 0.2 s, so a live modification takes effect mid-wait,
        and a cancel ends it at once.
        """
        started = time.monotonic()
        while self.meta.max_write_speed > 0:
            left = started + nbytes / self.meta.max_write_speed - time.monotonic()
            if left <= 0:
                break
            ctx.wait(min(left, 0.2))
            ctx.check()

    def task_meta_modified(self, ctx: Context, meta: bytes) -> None:
        """A new ``max_write_speed`` applies at once, even inside the running chunk."""
        new = ImportMeta.from_json(meta)
        if (new.csv_path, new.table, new.database_url, new.columns) != (
            self.meta.csv_path,
            self.meta.table,
            self.meta.database_url,
            self.meta.columns,
        ):
            raise NotImplementedError("only max_write_speed changes live; recreate the step executor")
        self.meta = new


class VerifyStepExecutor(_CsvStepExecutor):
    """Step 2: recount and re-checksum one chunk in the CSV and in the table, or the task's total."""

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        data = json.loads(subtask.meta)
        if data.get("check") == TOTAL_CHECK:
            self._verify_total(int(data["rows"]))
            return
        chunk = ChunkMeta.from_json(subtask.meta)
        in_csv = csvdata.stats_of(csvdata.read_chunk(self.meta.csv_path, chunk.chunk, self.meta.columns))
        ctx.check()
        in_table = csvtable.chunk_stats(self.target.read, self.table, self.task.id, chunk.ordinal)
        recorded = ChunkStats(int(chunk.rows or 0), int(chunk.checksum or "0", 16))
        if not (in_csv == in_table == recorded):
            raise VerifyMismatchError(
                f"chunk {chunk.ordinal} of {self.meta.csv_path} (bytes {chunk.offset}..{chunk.offset + chunk.length}) "
                f"does not match table {self.meta.table!r}: CSV has {in_csv.rows} rows/checksum {in_csv.checksum_hex}, "
                f"table has {in_table.rows}/{in_table.checksum_hex}, import recorded {recorded.rows}/"
                f"{recorded.checksum_hex}; the file or the table changed during the import: submit a new task"
            )
        self.summary.add(rows=in_table.rows, bytes=chunk.length, read_bytes=chunk.length)
        subtask.meta = chunk.to_json(verified=True)

    def _verify_total(self, expected: int) -> None:
        have = csvtable.count_task_rows(self.target.read, self.table, self.task.id)
        if have != expected:
            raise VerifyMismatchError(
                f"table {self.meta.table!r} holds {have} rows of task {self.task.id} but the chunks imported "
                f"{expected}; rows were added or removed by someone else during the import: submit a new task"
            )


class CSVImportExecutorExtension(ExecutorExtension):
    """Executor side: both steps are idempotent (a chunk is replaced, a check only reads), and a
    node runs up to the task's concurrency of chunks at once (parallel subtasks)."""

    def __init__(self, default_target: Target | None) -> None:
        self.default_target = default_target

    def is_idempotent(self, subtask: Subtask) -> bool:
        return True

    def get_step_executor(self, task: Task) -> StepExecutor:
        meta = ImportMeta.from_json(task.meta)
        target = resolve_target(meta, self.default_target)
        if task.step == STEP_IMPORT:
            return ImportStepExecutor(task, meta, target)
        if task.step == STEP_VERIFY:
            return VerifyStepExecutor(task, meta, target)
        raise InvalidImportMetaError(f"csv_import has no step {task.step}")

    def is_retryable_error(self, err: BaseException) -> bool:
        return not isinstance(err, DXFError) and is_transient_error(err)

    def allows_parallel_subtasks(self, task: Task) -> bool:
        """Chunks are independent and their step code is single-threaded: run ``concurrency`` at once."""
        return True


def executor_factory(ctx: Context, task: Task, param: ExecutorParam) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, CSVImportExecutorExtension(_default_target(param.task_table)))


# ---------------------------------------------------------------------------- scheduler side


class CSVImportSchedulerExtension(sched.Extension):
    """Scheduler side: plans chunks, then one check per chunk; reverting deletes the task's rows."""

    def __init__(self, default_target: Target | None) -> None:
        self.default_target = default_target

    def get_next_step(self, task: TaskBase) -> int:
        return {STEP_INIT: STEP_IMPORT, STEP_IMPORT: STEP_VERIFY}.get(task.step, STEP_DONE)

    def on_next_subtasks_batch(
        self, ctx: Context, handle: sched.TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        meta = ImportMeta.from_json(task.meta)
        if next_step == STEP_IMPORT:
            # Freeze the columns in the task meta, so every node parses the same way.
            meta.columns = csvdata.resolve_columns(meta.csv_path, meta.columns)
            task.meta = meta.to_json()
            target = resolve_target(meta, self.default_target)
            csvtable.ensure_table(target.write, csvtable.build_table(meta.table, meta.columns))
            chunks = csvdata.plan_chunks(meta.csv_path, meta.chunk_rows)
            logger.info("task %d: %s planned as %d chunks", task.id, meta.csv_path, len(chunks))
            return [ChunkMeta(c.ordinal, c.offset, c.length).to_json() for c in chunks]
        if next_step == STEP_VERIFY:
            imported = sorted(
                (ChunkMeta.from_json(m) for m in handle.get_previous_subtask_metas(task.id, STEP_IMPORT)),
                key=lambda c: c.ordinal,
            )
            total = sum(int(c.rows or 0) for c in imported)
            return [c.to_json() for c in imported] + [json.dumps({"check": TOTAL_CHECK, "rows": total}).encode()]
        raise InvalidImportMetaError(f"csv_import has no step {next_step}")

    def on_done(self, ctx: Context, handle: sched.TaskHandle, task: Task) -> None:
        if task.state != TaskState.REVERTING:
            return
        try:
            meta = ImportMeta.from_json(task.meta)
        except InvalidImportMetaError:
            return  # nothing was imported from a meta that never parsed
        if not meta.columns:
            return  # reverted before planning: no table was written
        target = resolve_target(meta, self.default_target)
        removed = csvtable.delete_task_rows(target.write, csvtable.build_table(meta.table, meta.columns), task.id)
        logger.info("task %d reverted: deleted %d imported rows from %s", task.id, removed, meta.table)

    def is_retryable_err(self, err: BaseException) -> bool:
        return not isinstance(err, DXFError) and is_transient_error(err)

    def modify_meta(self, old_meta: bytes, modifications: Sequence[Modification]) -> bytes:
        """``modify_max_write_speed`` changes the import's speed limit (bytes/s, 0 = none)."""
        meta = ImportMeta.from_json(old_meta)
        for mod in modifications:
            if mod.type != ModificationType.MAX_WRITE_SPEED.value:
                raise InvalidImportMetaError(
                    f"csv_import cannot apply {mod.type}; only {ModificationType.MAX_WRITE_SPEED}"
                )
            if mod.to < 0:
                raise InvalidImportMetaError(f"max_write_speed must be >= 0, got {mod.to}")
            meta.max_write_speed = mod.to
        return meta.to_json()


def scheduler_factory(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    return BaseScheduler(ctx, task, param, CSVImportSchedulerExtension(_default_target(param.task_manager)))


class RedactCredentials:
    """Cleanup routine: the password of ``database_url`` never reaches the history table."""

    def cleanup(self, ctx: Context, task: Task) -> None:
        try:
            meta = ImportMeta.from_json(task.meta)
        except InvalidImportMetaError:
            return
        if meta.database_url:
            masked = safe_url(meta.database_url)
            if masked != meta.database_url:
                meta.database_url = masked
                task.meta = meta.to_json()


def register() -> None:
    """Register both sides of ``csv_import`` in this process (idempotent)."""
    register_task_type(TASK_TYPE, executor_factory)
    register_scheduler_factory(TASK_TYPE, scheduler_factory)
    register_cleanup_routine(TASK_TYPE, RedactCredentials)


def result_of(subtasks: Sequence[Subtask]) -> ChunkStats:
    """The imported rows and checksum of a task, from its verified subtasks (for summaries)."""
    stats = []
    for s in subtasks:
        if s.step != STEP_VERIFY or not s.meta:
            continue
        data = json.loads(s.meta)
        if data.get("verified"):
            stats.append(ChunkStats(int(data["rows"]), int(data["checksum"], 16)))
    return csvdata.combine(stats)


register()
