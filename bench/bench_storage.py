"""Micro-benchmark of the storage layer: subtask start+finish round trips per second.

For each database it plans N pending subtasks with one ``switch_task_step``, then times
``start_subtask`` + ``finish_subtask`` on every one of them from 1 process, and from 2
processes that each own a TaskManager and a disjoint half of the subtasks.

    python -m bench.bench_storage --db all --subtasks 2000 --processes 1,2

Each database is a throwaway one of :mod:`bench.databases`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.databases import KINDS, throwaway
from dxf_celery.proto import Subtask, SubtaskState, TaskState
from dxf_celery.storage import TaskManager

EXEC_ID = "bench-node"


def _plan(tm: TaskManager, key: str, n: int) -> list[int]:
    """A running task with ``n`` pending subtasks on EXEC_ID; returns their ids."""
    task = tm.get_task_by_id(tm.create_task(key, "bench", 1))
    subtasks = [
        Subtask(
            id=0,
            task_id=task.id,
            step=1,
            type="bench",
            state=SubtaskState.PENDING,
            exec_id=EXEC_ID,
            ordinal=i + 1,
            meta=b'{"part": %d}' % i,
        )
        for i in range(n)
    ]
    if not tm.switch_task_step(task, TaskState.RUNNING, 1, subtasks):
        raise SystemExit("step switch failed")
    return [s.id for s in tm.get_subtasks(task.id, 1, with_history=False)]


def _worker(url: str, ids: list[int], start: Any, results: Any) -> None:
    """Start and finish each subtask of ``ids``; report (begin, end) monotonic times."""
    tm = TaskManager(url)
    try:
        tm.get_busy_nodes()  # connect before the clock starts
        start.wait(120)
        began = time.monotonic()
        for subtask_id in ids:
            tm.start_subtask(subtask_id, EXEC_ID)
            tm.finish_subtask(EXEC_ID, subtask_id, b'{"done": true}')
        results.put((began, time.monotonic(), len(ids)))
    finally:
        tm.dispose()


def run_one(kind: str, url: str, n: int, processes: int, key: str) -> float:
    """Round trips per second for ``n`` subtasks shared by ``processes`` processes."""
    tm = TaskManager(url)
    try:
        ids = _plan(tm, key, n)
    finally:
        tm.dispose()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    results = ctx.Queue()
    chunks = [ids[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_worker, args=(url, chunk, start, results)) for chunk in chunks]
    for p in procs:
        p.start()
    reports = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"{kind}: a benchmark process failed (exit {p.exitcode})")
    done = int(sum(r[2] for r in reports))
    elapsed = float(max(r[1] for r in reports) - min(r[0] for r in reports))
    check = TaskManager(url)
    try:
        counts = check.get_subtask_cnt_group_by_states(check.get_task_by_key(key).id, 1)
    finally:
        check.dispose()
    if counts != {SubtaskState.SUCCEED: n}:
        raise SystemExit(f"{kind}: expected {n} succeeded subtasks, found {counts}")
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mariadb", "all"], default="all")
    parser.add_argument("--subtasks", type=int, default=2000, help="subtasks per run (default 2000)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",") if p.strip()]
    kinds = list(KINDS) if args.db == "all" else [args.db]

    with tempfile.TemporaryDirectory() as tmp:
        rows: list[tuple[str, int, float]] = []
        for kind in kinds:
            with throwaway(kind, Path(tmp), "storage") as url:
                for processes in counts:
                    rate = run_one(kind, url, args.subtasks, processes, f"bench-{processes}-{time.time_ns()}")
                    rows.append((kind, processes, rate))
                    print(f"  {kind:<10} {processes} process(es): {rate:8.0f} round trips/s", file=sys.stderr)

    print(f"\nsubtask start+finish round trips per second ({args.subtasks} subtasks per run)\n")
    labels = [f"{p} process" + ("es" if p > 1 else "") for p in counts]
    print(f"| {'database':<10} | " + " | ".join(f"{label:>11}" for label in labels) + " |")
    print("|" + "-" * 12 + "|" + "|".join("-" * 13 for _ in counts) + "|")
    for kind in kinds:
        rates = {p: r for k, p, r in rows if k == kind}
        print(f"| {kind:<10} | " + " | ".join(f"{rates[p]:>11.0f}" for p in counts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
