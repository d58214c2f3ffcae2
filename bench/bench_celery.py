"""DXF on Celery vs raw Celery, same broker, same workers, same run.

Starts two real worker nodes (``celery -A bench_celery worker``, prefork) and one beat, then
measures:

1. raw Celery: N no-op tasks (each one Redis ``INCR``) published in a loop, until all ran;
2. DXF throughput: K tasks of M no-op subtasks each, from submit until every task succeeded
   (and the subtask rate between the first subtask start and the last subtask end);
3. DXF latency: submit -> first subtask running, for a few tasks submitted one at a time
   (the bench type logs ``time.monotonic()`` when a subtask starts; CLOCK_MONOTONIC is
   shared by the processes of a machine).

Usage (from the repository root)::

    python bench/bench_celery.py --broker redis://127.0.0.1:6379/3 \\
        --db-url postgresql+psycopg://postgres@127.0.0.1:5432/dxf_test_d1

The broker's Redis db is FLUSHED and the DXF tables emptied: point it at scratch ones.
This file is also the Celery app the workers load (``-A bench_celery``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from dxf_celery import DXF
from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, Task, TaskBase, TaskState
from dxf_celery.scheduler import BaseScheduler, TaskHandle, register_scheduler_factory
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.scheduler.param import Param as SchedulerParam
from dxf_celery.storage.provision import fresh_dxf_database
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Extension, StepExecutor, register_task_type
from dxf_celery.taskexecutor.param import Param

BROKER = os.environ.get("DXF_BENCH_BROKER", "redis://127.0.0.1:6379/3")
DB_URL = os.environ.get("DXF_BENCH_DB_URL", "sqlite:///dxf-bench.db")
COUNTER_KEY = "dxf-bench:count"
TASK_TYPE = "bench_noop"

app = Celery("dxf_bench", broker=BROKER)
app.conf.update(
    dxf_database_url=DB_URL,
    dxf_node_slots=int(os.environ.get("DXF_BENCH_SLOTS", "2")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
dxf = DXF(app)

_redis: Any = None


@app.task(name="bench.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    """The raw Celery baseline: one Redis INCR, like the baseline harness of the machine notes."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(BROKER)
    _redis.incr(COUNTER_KEY)


# ---------------------------------------------------------------------- the bench task type


def _meta(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw or b"{}")
    return data if isinstance(data, dict) else {}


class BenchStep(BaseStepExecutor):
    def __init__(self, record: str | None) -> None:
        self.record = record

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        if self.record and subtask.ordinal == 1:
            fd = os.open(self.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{subtask.task_id} {time.monotonic()}\n".encode())
            finally:
                os.close(fd)


class BenchExecutorExtension(Extension):
    def is_idempotent(self, subtask: Subtask) -> bool:
        return True

    def get_step_executor(self, task: Task) -> StepExecutor:
        return BenchStep(_meta(task.meta).get("record"))


class BenchSchedulerExtension(SchedulerExtension):
    def get_next_step(self, task: TaskBase) -> int:
        return 1 if task.step == STEP_INIT else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return [b"{}"] * int(_meta(task.meta).get("subtasks", 1))


def _executor(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
    return BaseTaskExecutor(ctx, task, param, BenchExecutorExtension())


def _scheduler(ctx: Context, task: Task, param: SchedulerParam) -> BaseScheduler:
    return BaseScheduler(ctx, task, param, BenchSchedulerExtension())


register_task_type(TASK_TYPE, _executor)
register_scheduler_factory(TASK_TYPE, _scheduler)


# ---------------------------------------------------------------------- the harness


class Processes:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, args: list[str]) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent) + os.pathsep + env.get("PYTHONPATH", "")
        celery = str(Path(sys.executable).with_name("celery"))
        with open(self.tmp / f"{name}.log", "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [celery, "-A", "bench_celery", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def bench_raw_celery(n: int) -> float:
    import redis

    client = redis.Redis.from_url(BROKER)
    client.delete(COUNTER_KEY)
    start = time.monotonic()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(producer=producer)
    _wait(lambda: int(client.get(COUNTER_KEY) or 0) >= n, 600, "raw Celery tasks", interval=0.002)
    elapsed = time.monotonic() - start
    client.close()
    return n / elapsed


def bench_dxf_throughput(tasks: int, subtasks: int, run: str) -> tuple[float, float]:
    tm = dxf.task_manager
    start = time.monotonic()
    submitted = [
        dxf.submit_task(f"{run}-tp-{i}", TASK_TYPE, meta=json.dumps({"subtasks": subtasks}).encode())
        for i in range(tasks)
    ]
    for task in submitted:
        final = dxf.wait_task(task.id, timeout=1800, poll_interval=0.02)
        assert final.state == TaskState.SUCCEED, final
    elapsed = time.monotonic() - start
    rows = [s for task in submitted for s in tm.get_subtasks(task.id)]
    first = min(s.start_time for s in rows if s.start_time is not None)
    last = max(s.end_time or s.update_time for s in rows if (s.end_time or s.update_time) is not None)
    assert last is not None
    busy = (last - first).total_seconds()
    total = tasks * subtasks
    return total / elapsed, total / busy if busy > 0 else float("nan")


def bench_dxf_latency(count: int, record: Path, run: str) -> list[float]:
    latencies = []
    for i in range(count):
        start = time.monotonic()
        task = dxf.submit_task(
            f"{run}-lat-{i}", TASK_TYPE, meta=json.dumps({"subtasks": 1, "record": str(record)}).encode()
        )

        def started(task_id: int = task.id) -> bool:
            return record.exists() and any(line.split()[0] == str(task_id) for line in record.read_text().splitlines())

        _wait(started, 120, "the first subtask to start")
        seen = [float(line.split()[1]) for line in record.read_text().splitlines() if line.split()[0] == str(task.id)]
        latencies.append(seen[0] - start)
        dxf.wait_task(task.id, timeout=120, poll_interval=0.02)
    return latencies


def main(argv: list[str] | None = None) -> int:
    global BROKER
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=BROKER)
    parser.add_argument("--db-url", default=None, help="default: a SQLite file in a temporary folder")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes per worker (= slots)")
    parser.add_argument("--raw-tasks", type=int, default=3000)
    parser.add_argument("--dxf-tasks", type=int, default=4)
    parser.add_argument("--subtasks", type=int, default=500)
    parser.add_argument("--latency-samples", type=int, default=5)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="dxf-bench-"))
    db_url = args.db_url or f"sqlite:///{tmp / 'dxf.db'}"
    import redis

    redis.Redis.from_url(args.broker).flushdb()
    fresh_dxf_database(db_url)
    env = {"DXF_BENCH_BROKER": args.broker, "DXF_BENCH_DB_URL": db_url, "DXF_BENCH_SLOTS": str(args.concurrency)}
    os.environ.update(env)
    app.conf.broker_url = args.broker
    app.conf.dxf_database_url = db_url
    BROKER = args.broker
    procs = Processes(tmp, env)
    run = str(int(time.time()))
    try:
        for name in ("b1@bench", "b2@bench"):
            procs.spawn(name, ["worker", "-n", name, "-P", "prefork", "-c", str(args.concurrency), "-l", "warning"])
        procs.spawn("beat", ["beat", "-s", str(tmp / "beat-schedule"), "-l", "warning"])
        _wait(lambda: len(dxf.task_manager.get_all_nodes()) >= 2, 120, "both nodes to register", interval=0.1)
        settings = dxf.settings
        print(
            f"broker {args.broker} | db {dxf.task_manager.url} | 2 nodes x prefork -c {args.concurrency}"
            f" (slots {args.concurrency}) | task_check {settings.task_check_interval}s,"
            f" scheduler {settings.scheduler_interval}s"
        )
        raw = bench_raw_celery(args.raw_tasks)
        dxf_e2e, dxf_busy = bench_dxf_throughput(args.dxf_tasks, args.subtasks, run)
        raw_again = bench_raw_celery(args.raw_tasks)
        latencies = bench_dxf_latency(args.latency_samples, tmp / "latency.log", run)
        raw_mean = (raw + raw_again) / 2
        print(f"raw Celery no-op tasks           : {raw:8.1f} /s, again after DXF: {raw_again:8.1f} /s")
        print(f"DXF no-op subtasks, submit->done : {dxf_e2e:8.1f} /s  ({args.dxf_tasks} tasks x {args.subtasks})")
        print(f"DXF no-op subtasks, first->last  : {dxf_busy:8.1f} /s")
        print(f"ratio DXF/raw (submit->done)     : {dxf_e2e / raw_mean:8.3f}")
        print(f"ratio DXF/raw (first->last)      : {dxf_busy / raw_mean:8.3f}")
        lat = sorted(latencies)
        print(
            f"submit -> first subtask running  : median {lat[len(lat) // 2] * 1000:.0f} ms, "
            f"min {lat[0] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms ({len(lat)} samples)"
        )
    finally:
        procs.close()
        dxf.state.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
