"""The Celery app the bench's workers load (``celery -A bench.app worker``), and its task types.

Everything comes from the environment the driver sets: ``DXF_BENCH_BROKER`` (also the result
backend, for the chord), ``DXF_BENCH_DB_URL``, ``DXF_BENCH_SLOTS`` and ``DXF_BENCH_DIR`` (the
run's folder, where the recorded times go). Defaults are the scheduler's production intervals.

* ``bench_noop``: a DXF type of ``steps`` steps of ``subtasks`` subtasks that do nothing (or
  sleep ``sleep`` seconds; ``parallel``: the type allows parallel subtasks); the first subtask
  of step 1 records ``time.monotonic()`` when it starts (CLOCK_MONOTONIC is shared by the
  processes of a machine: submit -> first running).
* ``bench.noop``: the raw Celery baseline, one Redis ``INCR``.
* ``bench.insert``: the durable-bookkeeping baseline, one INSERT + COMMIT, then the ``INCR``.
* ``bench.csv_*``: csv_import's two steps as a Celery chord, through the same functions.
* every scheduler pass that held the lease is timed into ``passes.log``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, chord, signals

from dxf_celery import DXF
from dxf_celery.context import Context
from dxf_celery.examples import csv_import, csvdata, csvtable
from dxf_celery.examples.csvdata import Chunk, ChunkStats
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, Task, TaskBase
from dxf_celery.scheduler import BaseScheduler, TaskHandle, register_scheduler_factory
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Extension, StepExecutor, register_task_type
from dxf_celery.taskexecutor.param import Param

BROKER = os.environ.get("DXF_BENCH_BROKER", "redis://127.0.0.1:6379/3")
DB_URL = os.environ.get("DXF_BENCH_DB_URL", "sqlite:///dxf-bench.db")
RUN_DIR = os.environ.get("DXF_BENCH_DIR", ".")
COUNTER_KEY = "dxf-bench:count"
DONE_KEY = "dxf-bench:chord-done"
TASK_TYPE = "bench_noop"
INSERT_TABLE = "bench_insert"

app = Celery("dxf_bench", broker=BROKER, backend=BROKER)
app.conf.update(
    dxf_database_url=DB_URL,
    dxf_node_slots=int(os.environ.get("DXF_BENCH_SLOTS", "2")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
dxf = DXF(app)
csv_import.register()

_redis: Any = None
_engine: Any = None


def _incr() -> None:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(BROKER)
    _redis.incr(COUNTER_KEY)


def append_line(path: str, line: str) -> None:
    """One ``O_APPEND`` write: atomic across the processes that share the file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="bench.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    _incr()


@app.task(name="bench.insert", ignore_result=True)  # type: ignore[untyped-decorator]
def insert(i: int) -> None:
    global _engine
    if _engine is None:
        from sqlalchemy import create_engine

        _engine = create_engine(DB_URL)
    from sqlalchemy import text

    with _engine.begin() as conn:  # one INSERT, one COMMIT
        conn.execute(text(f"INSERT INTO {INSERT_TABLE} (i) VALUES (:i)"), {"i": i})
    _incr()


# ---------------------------------------------------------------------- csv_import as a chord


def _target() -> csvtable.Target:
    return csvtable.target_for(DB_URL)


def _columns(path: str) -> list[csvdata.Column]:
    return csvdata.resolve_columns(path, None)


@app.task(name="bench.csv_import_chunk")  # type: ignore[untyped-decorator]
def csv_import_chunk(path: str, table: str, job: int, ordinal: int, offset: int, length: int) -> list[Any]:
    """csv_import's step 1 for one chunk: parse, then replace the chunk's rows in one transaction."""
    columns = _columns(path)
    rows = list(csvdata.read_chunk(path, Chunk(ordinal, offset, length), columns))
    stats = csvdata.stats_of(rows)
    written = csvtable.replace_chunk(
        _target().write, csvtable.build_table(table, columns), job, ordinal, rows, Context.background(), None
    )
    assert written == stats.rows
    return [ordinal, offset, length, stats.rows, stats.checksum_hex]


@app.task(name="bench.csv_verify_chunk")  # type: ignore[untyped-decorator]
def csv_verify_chunk(path: str, table: str, job: int, chunk: list[Any]) -> int:
    """csv_import's step 2 for one chunk: CSV, table and recorded stats must agree."""
    ordinal, offset, length, rows, checksum = chunk
    columns = _columns(path)
    in_csv = csvdata.stats_of(csvdata.read_chunk(path, Chunk(ordinal, offset, length), columns))
    in_table = csvtable.chunk_stats(_target().read, csvtable.build_table(table, columns), job, ordinal)
    if not (in_csv == in_table == ChunkStats(int(rows), int(checksum, 16))):
        raise csv_import.VerifyMismatchError(f"chunk {ordinal} does not match")
    return int(rows)


@app.task(name="bench.csv_verify_total")  # type: ignore[untyped-decorator]
def csv_verify_total(path: str, table: str, job: int, expected: int) -> int:
    have = csvtable.count_task_rows(_target().read, csvtable.build_table(table, _columns(path)), job)
    if have != expected:
        raise csv_import.VerifyMismatchError(f"table holds {have} rows, the chunks imported {expected}")
    return have


@app.task(name="bench.csv_verify")  # type: ignore[untyped-decorator]
def csv_verify(chunks: list[list[Any]], path: str, table: str, job: int) -> None:
    """The import chord's callback: the verify chord (every chunk, plus the total)."""
    total = sum(int(c[3]) for c in chunks)
    header = [csv_verify_chunk.s(path, table, job, c) for c in chunks]
    header.append(csv_verify_total.s(path, table, job, total))
    chord(header)(csv_done.s(job))


@app.task(name="bench.csv_done")  # type: ignore[untyped-decorator]
def csv_done(results: list[int], job: int) -> None:
    import redis

    client = redis.Redis.from_url(BROKER)
    try:
        client.set(f"{DONE_KEY}:{job}", json.dumps(results[:-1]))
    finally:
        client.close()


# ---------------------------------------------------------------------- the bench task type


def _meta(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw or b"{}")
    return data if isinstance(data, dict) else {}


class BenchStep(BaseStepExecutor):
    def __init__(self, record: str | None, sleep: float) -> None:
        self.record = record
        self.sleep = sleep

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        if self.record and subtask.ordinal == 1 and subtask.step == 1:
            append_line(self.record, f"{subtask.task_id} {time.monotonic()}\n")
        if self.sleep:
            ctx.wait(self.sleep)


class BenchExecutorExtension(Extension):
    def is_idempotent(self, subtask: Subtask) -> bool:
        return True

    def get_step_executor(self, task: Task) -> StepExecutor:
        meta = _meta(task.meta)
        return BenchStep(meta.get("record"), float(meta.get("sleep", 0)))

    def allows_parallel_subtasks(self, task: Task) -> bool:
        return bool(_meta(task.meta).get("parallel", False))


class BenchSchedulerExtension(SchedulerExtension):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def get_next_step(self, task: TaskBase) -> int:
        if task.step == STEP_INIT:
            return 1
        return task.step + 1 if task.step < self.steps else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return [b"{}"] * int(_meta(task.meta).get("subtasks", 1))


def _executor(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, BenchExecutorExtension())


def _scheduler(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    return BaseScheduler(ctx, task, param, BenchSchedulerExtension(int(_meta(task.meta).get("steps", 1))))


register_task_type(TASK_TYPE, _executor)
register_scheduler_factory(TASK_TYPE, _scheduler)


# ---------------------------------------------------------------------- scheduler pass times


@signals.worker_ready.connect
def _time_passes(sender: Any = None, **_: Any) -> None:
    """Wrap this node's ``schedule_once``: each pass that held the lease is one line of passes.log."""
    from dxf_celery.worker.node import runtimes

    log = os.path.join(RUN_DIR, "passes.log")
    for runtime in list(runtimes.values()):
        scheduler: Any = runtime.scheduler
        inner = scheduler.schedule_once

        def timed(inner: Any = inner, node: str = runtime.nodename) -> bool:
            started = time.perf_counter()
            held = bool(inner())
            if held:
                append_line(log, f"{node} {time.monotonic()} {time.perf_counter() - started}\n")
            return held

        scheduler.schedule_once = timed
