"""Per-subtask framework overhead of one task executor with a no-op step executor.

Plans N subtasks of one task on one node and times ``BaseTaskExecutor.run()`` until it has
finished them all: what remains is the framework's own cost per subtask (SQL reads and
writes, the watcher thread, bookkeeping). Usage::

    python -m bench.bench_executor [-n 2000] [--db sqlite,postgresql,mariadb]

Each database is a throwaway one of :mod:`bench.databases` (servers: DXF_BENCH_POSTGRESQL,
DXF_BENCH_MARIADB).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.databases import throwaway
from dxf_celery.context import Context
from dxf_celery.proto import NodeResource, Subtask, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Extension, Intervals, Param, SlotManager


class NoopExtension(Extension):
    def get_step_executor(self, task: Task) -> BaseStepExecutor:
        return BaseStepExecutor()


def bench(url: str, n: int) -> float:
    """Seconds one executor needs to run ``n`` no-op subtasks."""
    tm = TaskManager(url)
    try:
        exec_id = "bench-node"
        tm.init_meta(exec_id, "", 4)
        task_id = tm.create_task(f"bench-{time.time_ns()}", "bench", 1)
        task = tm.get_task_by_id(task_id)
        subtasks = [Subtask(0, task_id, 1, "bench", SubtaskState.PENDING, exec_id, i + 1, meta=b"{}") for i in range(n)]
        assert tm.switch_task_step(task, TaskState.RUNNING, 1, subtasks)
        task = tm.get_task_by_id(task_id)
        # Production helper periods; only the poll pause is tiny and one empty poll ends the run.
        intervals = Intervals(subtask_check=0.001, max_subtask_check=0.001, max_idle_polls=1)
        slots = SlotManager(4)
        assert slots.alloc(task)
        param = Param(tm, slots, NodeResource(4, 4 << 30), exec_id, intervals)
        executor = BaseTaskExecutor(Context.background(), task, param, NoopExtension())
        start = time.perf_counter()
        executor.run()
        elapsed = time.perf_counter() - start
        done = tm.get_subtask_cnt_group_by_states(task_id, 1)
        assert done == {SubtaskState.SUCCEED: n}, done
        return elapsed
    finally:
        tm.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="subtasks (default 2000)")
    parser.add_argument("--db", default="sqlite,postgresql", help="comma list: sqlite,postgresql,mariadb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
            with throwaway(kind, Path(tmp), "executor") as url:
                elapsed = bench(url, args.n)
            print(
                f"{kind:10s} {args.n} subtasks in {elapsed:.2f}s: {args.n / elapsed:8.1f} subtasks/s, "
                f"{elapsed / args.n * 1e6:8.0f} us per subtask"
            )


if __name__ == "__main__":
    main()
