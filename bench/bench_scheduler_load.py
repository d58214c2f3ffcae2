"""Scheduler under load: the pass at many tasks and subtasks, and many tiny tasks end to end.

1. ``pass``: N running tasks holding M live subtasks in all (pending and running, spread over
   3 nodes x 8 slots); nothing finishes, so every pass does the steady-state work. Reports
   the median and p95 of ``Manager.schedule_once()`` with the balancer (and the slot-usage
   aggregate) in every pass, at DXF's default intervals (a pass every 0.5 s, the balancer
   every 1.5 s), and without the balancer.
2. ``tiny``: T tasks of 2 steps x 1 no-op subtask submitted in a loop to a LocalCluster
   (3 nodes x 8 slots, threads); reports the submit rate and the tasks/s until the last one
   succeeded, with the fast test intervals and with the production defaults.

    python bench/bench_scheduler_load.py --db sqlite,postgresql --tasks 1000 --subtasks 100000 --tiny 1000

3. ``queries``: the median of each per-pass read (slot usage, the live-load aggregate, one
   task's active rows, the step counts) over the same populated tables.

PostgreSQL and MariaDB use the database named by ``--pg-db`` on ``--pg-url`` /
``--mariadb-url`` (created if missing; its dxf tables are migrated and emptied).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy import insert, update

from dxf_celery import scheduler, taskexecutor
from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, SubtaskState, Task, TaskBase, TaskState
from dxf_celery.scheduler import BaseScheduler, SchedulerIntervals, TaskHandle
from dxf_celery.storage import TaskManager, migrate
from dxf_celery.storage.base import utcnow
from dxf_celery.storage.provision import fresh_dxf_database
from dxf_celery.storage.tables import subtask_table, task_table
from dxf_celery.taskexecutor import BaseStepExecutor, BaseTaskExecutor, Intervals, StepExecutor
from dxf_celery.testing import LocalCluster

LOAD_TYPE = "bench-load"
NODES = ("node-1", "node-2", "node-3")


class _TwoSteps(scheduler.Extension):
    def get_next_step(self, task: TaskBase) -> int:
        if task.step == STEP_INIT:
            return 1
        return 2 if task.step == 1 else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return [b"{}"]


class _Noop(BaseStepExecutor):
    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        return None


class _ExecExt(taskexecutor.Extension):
    def is_idempotent(self, subtask: Subtask) -> bool:
        return True

    def get_step_executor(self, task: Task) -> StepExecutor:
        return _Noop()


def register() -> None:
    scheduler.register_scheduler_factory(
        LOAD_TYPE, lambda ctx, task, param: BaseScheduler(ctx, task, param, _TwoSteps())
    )
    taskexecutor.register_task_type(LOAD_TYPE, lambda ctx, task, param: BaseTaskExecutor(ctx, task, param, _ExecExt()))


def fresh_url(kind: str, tmp: Path, pg_url: str, pg_db: str, name: str, mariadb_url: str = "") -> str:
    if kind == "sqlite":
        url = f"sqlite:///{tmp / (name + '.db')}"
        migrate(url)
        return url
    server = mariadb_url if kind == "mariadb" else pg_url
    return fresh_dxf_database(server.rsplit("/", 1)[0] + "/" + pg_db)


def _populate(tm: TaskManager, tasks: int, subtasks: int) -> None:
    """``tasks`` running tasks at step 1 sharing ``subtasks`` live subtasks (1 in 10 running)."""
    engine = tm.write_engine
    per_task = max(1, subtasks // tasks)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(task_table),
            [
                {
                    "task_key": f"load-{i}",
                    "type": LOAD_TYPE,
                    "state": TaskState.PENDING.value,
                    "step": STEP_INIT,
                    "priority": 512,
                    "concurrency": 1,
                    "target_scope": "",
                    "max_node_count": 0,
                    "extra_params": "{}",
                    "meta": b"{}",
                    "create_time": now,
                    "state_update_time": now,
                }
                for i in range(tasks)
            ],
        )
    ids = [t.id for t in tm.get_all_tasks()]
    rows = []
    for n, task_id in enumerate(ids):
        for o in range(per_task):
            rows.append(
                {
                    "task_id": task_id,
                    "step": 1,
                    "type": LOAD_TYPE,
                    "exec_id": NODES[(n + o) % len(NODES)],
                    "state": SubtaskState.RUNNING.value if o % 10 == 0 else SubtaskState.PENDING.value,
                    "concurrency": 1,
                    "ordinal": o + 1,
                    "meta": b"{}",
                    "summary": "{}",
                    "checkpoint": "{}",
                    "create_time": now,
                }
            )
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(subtask_table), rows[start : start + 5000])
        conn.execute(update(task_table).values(state=TaskState.RUNNING.value, step=1, start_time=now))


#: (label, balance interval, pause between passes): the balancer (and the usage aggregate)
#: in every pass; DXF's default intervals with a pass every 0.5 s; no balancer at all.
PASS_VARIANTS = (
    ("balance every pass", 0.0, 0.0),
    ("default intervals, a pass every 0.5 s", SchedulerIntervals().balance, SchedulerIntervals().schedule),
    ("no balancer", 3600.0, 0.0),
)


def bench_pass(url: str, tasks: int, subtasks: int, passes: int) -> dict[str, list[float]]:
    register()
    tm = TaskManager(url)
    try:
        for node in NODES:
            tm.init_meta(node, "", 8)
        _populate(tm, tasks, subtasks)
        out: dict[str, list[float]] = {}
        for label, balance, pause in PASS_VARIANTS:
            intervals = replace(SchedulerIntervals(), node_ttl=3600.0, balance=balance)
            mgr = scheduler.Manager(tm, owner_id=f"bench-{label}", intervals=intervals)
            mgr.schedule_once()  # warm up: schedulers start, the first balance round moves rows
            mgr.schedule_once()
            samples = []
            for _ in range(passes):
                time.sleep(pause)
                start = time.perf_counter()
                mgr.schedule_once()
                samples.append(time.perf_counter() - start)
            out[label] = samples
            out[f"{label} scheduled"] = [float(len(mgr.scheduled_task_ids()))]
            mgr.release()
        return out
    finally:
        tm.dispose()


def bench_queries(url: str, tasks: int, subtasks: int, rounds: int = 9) -> dict[str, float]:
    """Median ms of each per-pass read of the scheduler over the populated tables."""
    tm = TaskManager(url)
    try:
        _populate(tm, tasks, subtasks)
        first = tm.get_all_tasks()[0]
        reads: dict[str, Callable[[], object]] = {
            "get_used_slots_on_nodes": tm.get_used_slots_on_nodes,
            "get_active_subtasks (one task)": lambda: tm.get_active_subtasks(first.id),
            "get_step_counts": lambda: tm.get_step_counts({t.id: 1 for t in tm.get_all_tasks()}),
        }
        if hasattr(tm, "get_live_load"):  # not in releases before the load index (to compare)
            reads["get_live_load"] = tm.get_live_load
        out = {}
        for label, read in reads.items():
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                read()
                samples.append(time.perf_counter() - start)
            out[label] = statistics.median(samples) * 1000
        return out
    finally:
        tm.dispose()


def bench_tiny(url: str, n: int, *, production: bool) -> tuple[float, float]:
    """(submits/s, tasks/s end to end) for ``n`` tiny two-step tasks."""
    register()
    kwargs: dict[str, object] = {}
    if production:
        kwargs = {
            "scheduler_intervals": SchedulerIntervals(),
            "executor_intervals": Intervals(),
            "check_interval": taskexecutor.TASK_CHECK_INTERVAL,
        }
    with LocalCluster(url, nodes=3, slots=8, **kwargs) as cluster:  # type: ignore[arg-type]
        start = time.perf_counter()
        ids = [cluster.submit_task(f"tiny-{production}-{i}", LOAD_TYPE).id for i in range(n)]
        submitted = time.perf_counter() - start
        tm = cluster.task_manager
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            live = tm.get_all_tasks()
            if not [t for t in live if t.state not in (TaskState.SUCCEED,)]:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        done = [tm.get_task_by_id_with_history(i) for i in ids]
        bad = [t.state for t in done if t.state != TaskState.SUCCEED]
        assert not bad, f"{len(bad)} tasks did not succeed: {bad[:5]}"
    return n / submitted, n / elapsed


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--subtasks", type=int, default=100_000)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--tiny", type=int, default=1000)
    parser.add_argument("--only", choices=("pass", "queries", "tiny", "tiny-fast", "tiny-production"), default=None)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--pg-db", default="dxf_bench_sched", help="the database name (PostgreSQL and MariaDB)")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root@127.0.0.1:3306/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
            if args.only in (None, "queries"):
                url = fresh_url(kind, tmp, args.pg_url, args.pg_db, "queries", args.mariadb_url)
                for label, ms in bench_queries(url, args.tasks, args.subtasks).items():
                    print(f"{kind:10s} {label} at {args.tasks} tasks / {args.subtasks} subtasks: {ms:.1f} ms")
            if args.only in (None, "pass"):
                url = fresh_url(kind, tmp, args.pg_url, args.pg_db, "pass", args.mariadb_url)
                res = bench_pass(url, args.tasks, args.subtasks, args.passes)
                for label, _, _ in PASS_VARIANTS:
                    print(
                        f"{kind:10s} pass at {args.tasks} tasks / {args.subtasks} subtasks, {label}: "
                        f"{_ms(res[label])}; {int(res[label + ' scheduled'][0])} tasks scheduled"
                    )
            for production in (False, True):
                want = "tiny-production" if production else "tiny-fast"
                if args.only not in (None, "tiny", want):
                    continue
                url = fresh_url(kind, tmp, args.pg_url, args.pg_db, f"tiny{production}", args.mariadb_url)
                submit_rate, rate = bench_tiny(url, args.tiny, production=production)
                label = "DXF default intervals" if production else "fast intervals (0.05 s)"
                print(
                    f"{kind:10s} {args.tiny} tiny 2-step tasks, {label}: {rate:.1f} tasks/s end to end "
                    f"(submit {submit_rate:.0f}/s)"
                )


if __name__ == "__main__":
    main()
