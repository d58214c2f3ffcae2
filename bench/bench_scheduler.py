"""Scheduler benchmarks: scheduling latency and the cost of planning a huge step.

1. Latency: submit -> first subtask running, on a LocalCluster (3 nodes, threads), median of
   several runs, with the fast test intervals and with DXF's production intervals.
2. Planning: one scheduler pass that plans a step of N subtasks (``on_next_subtasks_batch``
   returning N small metas), in one transaction and in batches; the pass time is reported
   next to the time spent building the metas.

    python -m bench.bench_scheduler --db sqlite,postgresql --runs 7 --subtasks 100000

Each run gets a throwaway database of :mod:`bench.databases`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.databases import throwaway
from dxf_celery import scheduler, taskexecutor
from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, Task, TaskBase, TaskState
from dxf_celery.scheduler import BaseScheduler, SchedulerIntervals, TaskHandle
from dxf_celery.storage import TaskManager, migrate
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Intervals, StepExecutor
from dxf_celery.testing import LocalCluster

BENCH_TYPE = "bench"
_first_run: dict[int, float] = {}
_first_lock = threading.Lock()
_plan_seconds: list[float] = []


class _SchedExt(scheduler.Extension):
    def __init__(self, n: int) -> None:
        self.n = n

    def get_next_step(self, task: TaskBase) -> int:
        return 1 if task.step == STEP_INIT else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        start = time.perf_counter()
        metas = [b'{"i": %d}' % i for i in range(self.n)]
        _plan_seconds.append(time.perf_counter() - start)
        return metas


class _Step(BaseStepExecutor):
    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        with _first_lock:
            _first_run.setdefault(subtask.task_id, time.perf_counter())


class _ExecExt(taskexecutor.Extension):
    def get_step_executor(self, task: Task) -> StepExecutor:
        return _Step()


def register(n: int) -> None:
    scheduler.register_scheduler_factory(
        BENCH_TYPE, lambda ctx, task, param: BaseScheduler(ctx, task, param, _SchedExt(n))
    )
    taskexecutor.register_task_type(BENCH_TYPE, lambda ctx, task, param: BaseTaskExecutor(ctx, task, param, _ExecExt()))


def bench_latency(url: str, runs: int, *, production: bool) -> list[float]:
    register(1)
    with _first_lock:
        _first_run.clear()  # task ids restart with every fresh database
    kwargs: dict[str, object] = {}
    if production:
        kwargs = {
            "scheduler_intervals": SchedulerIntervals(),
            "executor_intervals": Intervals(),
            "check_interval": taskexecutor.TASK_CHECK_INTERVAL,
        }
    samples: list[float] = []
    with LocalCluster(url, nodes=3, slots=8, **kwargs) as cluster:  # type: ignore[arg-type]
        for i in range(runs):
            start = time.perf_counter()
            task = cluster.submit_task(f"lat-{production}-{i}", BENCH_TYPE)
            while True:
                with _first_lock:
                    seen = _first_run.get(task.id)
                if seen is not None:
                    break
                time.sleep(0.001)
            samples.append(seen - start)
            cluster.wait_task(task.id, timeout=60)
    return samples


def bench_plan(url: str, n: int, *, batched: bool) -> tuple[float, float]:
    """Seconds of the scheduler pass that plans ``n`` subtasks, and of building the metas."""
    register(n)
    migrate(url)
    tm = TaskManager(url)
    try:
        for i in range(3):
            tm.init_meta(f"node-{i}", "", 8)
        intervals = replace(SchedulerIntervals(), node_ttl=3600.0)
        if batched:
            intervals = replace(intervals, batch_switch_bytes=0)
        mgr = scheduler.Manager(tm, owner_id="bench", intervals=intervals)
        task_id = tm.create_task(f"plan-{batched}", BENCH_TYPE, 1)
        _plan_seconds.clear()
        start = time.perf_counter()
        mgr.schedule_once()
        elapsed = time.perf_counter() - start
        mgr.release()
        task = tm.get_task_by_id(task_id)
        count = len(tm.get_subtasks(task_id, 1, with_history=False))
        assert (task.state, task.step, count) == (TaskState.RUNNING, 1, n), (task.state, task.step, count)
        return elapsed, sum(_plan_seconds)
    finally:
        tm.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--subtasks", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
            for production in (False, True):
                with throwaway(kind, tmp, f"lat{int(production)}") as url:
                    samples = bench_latency(url, args.runs, production=production)
                label = "DXF default intervals" if production else "fast intervals (0.05 s)"
                print(
                    f"{kind:10s} latency submit->first subtask running, {label}: "
                    f"median {statistics.median(samples) * 1000:.0f} ms "
                    f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}, n={len(samples)})"
                )
            for batched in (False, True):
                with throwaway(kind, tmp, f"plan{int(batched)}") as url:
                    elapsed, build = bench_plan(url, args.subtasks, batched=batched)
                how = "in batches" if batched else "one transaction"
                print(
                    f"{kind:10s} plan a step of {args.subtasks} subtasks ({how}): pass {elapsed:.2f} s "
                    f"(of which building metas {build:.2f} s)"
                )


if __name__ == "__main__":
    main()
