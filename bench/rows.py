"""One function per measurement of the table; each returns plain figures (a dict) for the JSON.

They drive a running :class:`bench.cluster.Cluster` from this process: DXF through the bench
app's ``dxf`` client, raw Celery through its tasks, procrastinate through its app. Rates are
end to end: from the first submit/publish until the last unit of work is done.
"""

from __future__ import annotations

import functools
import gc
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster import Cluster, reset_hwm, vm_hwm_kib, wait_for
from dxf_celery.proto import SubtaskState, TaskState


@dataclass
class Stage:
    """What every row needs: the processes, the client app, the broker's Redis, a unique key prefix."""

    cluster: Cluster
    bench: Any  # the bench.app module (app, dxf, tasks)
    redis: Any
    run: str
    db_url: str

    @property
    def dxf(self) -> Any:
        return self.bench.dxf

    def key(self, what: str) -> str:
        return f"{self.run}-{what}-{time.monotonic_ns()}"


def _counter_reset(stage: Stage) -> None:
    stage.redis.delete(stage.bench.COUNTER_KEY)


def _counter_wait(stage: Stage, n: int, timeout: float) -> None:
    wait_for(lambda: int(stage.redis.get(stage.bench.COUNTER_KEY) or 0) >= n, timeout, f"{n} jobs", interval=0.002)


def raw_celery(stage: Stage, n: int) -> float:
    """No-op Celery tasks per second: ``n`` published in a loop, until all ran."""
    _counter_reset(stage)
    start = time.monotonic()
    with stage.bench.app.producer_or_acquire() as producer:
        for _ in range(n):
            stage.bench.noop.apply_async(producer=producer)
    _counter_wait(stage, n, 600)
    return n / (time.monotonic() - start)


def celery_insert_group(stage: Stage, n: int) -> float:
    """A Celery group of ``n`` tasks that each do one INSERT + COMMIT, per second."""
    from celery import group

    _counter_reset(stage)
    start = time.monotonic()
    result = group(stage.bench.insert.s(i) for i in range(n)).apply_async()
    _counter_wait(stage, n, 600)
    elapsed = time.monotonic() - start
    del result  # finalisers that talk to Redis run now, not at interpreter exit
    gc.collect()
    return n / elapsed


def procrastinate_jobs(stage: Stage, papp: Any, n: int) -> float:
    """Procrastinate no-op jobs per second: ``n`` deferred one by one, until all ran."""
    _counter_reset(stage)
    task = papp.tasks["bench_noop"]
    start = time.monotonic()
    for _ in range(n):
        task.defer()
    _counter_wait(stage, n, 600)
    return n / (time.monotonic() - start)


def dxf_noop(stage: Stage, tasks: int, subtasks: int, *, timeout: float = 1800) -> dict[str, float]:
    """``tasks`` tasks of ``subtasks`` no-op subtasks: subtasks per second from the first submit to the last success."""
    dxf = stage.dxf
    start = time.monotonic()
    meta = json.dumps({"subtasks": subtasks}).encode()
    submitted = [dxf.submit_task(stage.key(f"noop{i}"), stage.bench.TASK_TYPE, meta=meta) for i in range(tasks)]
    for task in submitted:
        final = dxf.wait_task(task.id, timeout=timeout, poll_interval=0.02)
        if final.state != TaskState.SUCCEED:
            raise RuntimeError(f"task {task.id} ended {final.state}")
    elapsed = time.monotonic() - start
    return {"per_s": tasks * subtasks / elapsed, "seconds": elapsed}


def _passes(stage: Stage, since: float) -> list[float]:
    path = stage.cluster.run_dir / "passes.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and float(parts[1]) >= since:
            out.append(float(parts[2]))
    return out


def big_task(stage: Stage, subtasks: int, cap: float, worker_names: list[str]) -> dict[str, Any]:
    """One task of ``subtasks`` no-op subtasks, watched for at most ``cap`` s: rate, pass p50, leader RSS."""
    from dxf_celery.scheduler.manager import LEASE_NAME

    tm = stage.dxf.task_manager
    for name in worker_names:
        reset_hwm(stage.cluster.pid(name))
    since = time.monotonic()
    meta = json.dumps({"subtasks": subtasks}).encode()
    task = stage.dxf.submit_task(stage.key(f"big{subtasks}"), stage.bench.TASK_TYPE, meta=meta)
    leader = None
    done = 0
    while True:
        now = time.monotonic()
        base = stage.dxf.get_task(task.id)  # finished tasks are read from the history
        leader = tm.get_lease_owner(LEASE_NAME) or leader
        if base.state == TaskState.SUCCEED:
            done = subtasks
            break
        if base.state not in (TaskState.PENDING, TaskState.RUNNING):
            raise RuntimeError(f"big task ended {base.state}")
        if now - since > cap:
            counts = tm.get_subtask_cnt_group_by_states(task.id, 1)
            done = int(counts.get(SubtaskState.SUCCEED, 0))
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - since  # a capped task is left running: its stage ends next
    passes = _passes(stage, since)
    pid = stage.cluster.pid(leader) if leader in stage.cluster.procs else None
    return {
        "subtasks": subtasks,
        "done": done,
        "finished": done == subtasks,
        "seconds": elapsed,
        "per_s": done / elapsed,
        "pass_p50_ms": statistics.median(passes) * 1000 if passes else None,
        "passes": len(passes),
        "leader": leader,
        "leader_rss_mb": vm_hwm_kib(pid) / 1024 if pid else None,
        "leader_pool_rss_mb": max((vm_hwm_kib(c) for c in _kids(pid)), default=0) / 1024 if pid else None,
    }


def _kids(pid: int | None) -> list[int]:
    from bench.cluster import children

    return children(pid) if pid else []


def many_small_tasks(stage: Stage, tasks: int, cap: float) -> dict[str, Any]:
    """``tasks`` tasks of 2 steps x 1 no-op subtask submitted in a loop: submit rate and tasks/s end to end."""
    dxf = stage.dxf
    meta = json.dumps({"subtasks": 1, "steps": 2}).encode()
    start = time.monotonic()
    ids = [dxf.submit_task(stage.key(f"small{i}"), stage.bench.TASK_TYPE, meta=meta).id for i in range(tasks)]
    submitted = time.monotonic() - start
    # One count per poll (live + history, the ids of this loop): a read per pending task
    # (1,000 per poll) loaded the database and the 2 cores the row measures.
    tm, low, high = dxf.task_manager, min(ids), max(ids)
    done = 0
    while done < tasks and time.monotonic() - start < cap:
        done = tm.count_tasks([TaskState.SUCCEED], min_id=low, max_id=high)
        if done < tasks:
            time.sleep(0.05)
    elapsed = time.monotonic() - start  # tasks left are dropped with the stage's database
    return {
        "tasks": tasks,
        "done": done,
        "finished": done == tasks,
        "seconds": elapsed,
        "tasks_per_s": done / elapsed,
        "submit_per_s": tasks / submitted,
    }


def latency(stage: Stage, samples: int) -> dict[str, Any]:
    """Submit -> first subtask running, one task at a time, default intervals."""
    record = stage.cluster.run_dir / f"latency-{time.monotonic_ns()}.log"
    seen: list[float] = []
    for i in range(samples):
        start = time.monotonic()
        meta = json.dumps({"subtasks": 1, "record": str(record)}).encode()
        task = stage.dxf.submit_task(stage.key(f"lat{i}"), stage.bench.TASK_TYPE, meta=meta)
        at = wait_for(functools.partial(_started, record, task.id), 120, "the first subtask to start", interval=0.001)
        seen.append(at - start)
        stage.dxf.wait_task(task.id, timeout=120, poll_interval=0.02)
    seen.sort()
    return {
        "samples": len(seen),
        "p50_ms": statistics.median(seen) * 1000,
        "p95_ms": seen[min(len(seen) - 1, round(0.95 * (len(seen) - 1)))] * 1000,
        "max_ms": seen[-1] * 1000,
    }


def _started(record: Path, task_id: int) -> float | None:
    if not record.exists():
        return None
    for line in record.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == str(task_id):
            return float(parts[1])
    return None


def pool_time(
    stage: Stage, tasks: int, subtasks: int, sleep: float, slots_total: int, *, parallel: bool = True
) -> dict[str, Any]:
    """Share of the pool's slot time spent inside subtasks: ``tasks`` tasks (concurrency 2) of sleeping
    subtasks; ``parallel``: the type allows parallel subtasks (else DXF's one at a time per node)."""
    dxf = stage.dxf
    meta = json.dumps({"subtasks": subtasks, "sleep": sleep, "parallel": parallel}).encode()
    start = time.monotonic()
    tag = "par" if parallel else "one"
    ids = [
        dxf.submit_task(stage.key(f"pool-{tag}{i}"), stage.bench.TASK_TYPE, meta=meta, concurrency=2).id
        for i in range(tasks)
    ]
    for task_id in ids:
        if dxf.wait_task(task_id, timeout=600, poll_interval=0.05).state != TaskState.SUCCEED:
            raise RuntimeError(f"pool-time task {task_id} failed")
    wall = time.monotonic() - start
    busy = tasks * subtasks * sleep
    share = busy / (wall * slots_total)
    return {
        "tasks": tasks,
        "subtasks": subtasks,
        "sleep_s": sleep,
        "parallel": parallel,
        "wall_s": wall,
        "share": share,
    }


def csv_dxf(stage: Stage, path: Path, chunk_rows: int) -> float:
    """Seconds of one csv_import task (import + verify) of ``path``."""
    from dxf_celery.examples import csv_import

    meta = csv_import.build_meta(path, "bench_csv_dxf", chunk_rows=chunk_rows)
    start = time.monotonic()
    task = stage.dxf.submit_task(stage.key("csv"), csv_import.TASK_TYPE, meta=meta, concurrency=2)
    final = stage.dxf.wait_task(task.id, timeout=1800, poll_interval=0.05)
    if final.state != TaskState.SUCCEED:
        raise RuntimeError(f"csv_import ended {final.state}: {final.error!r}")
    return time.monotonic() - start


def csv_chord(stage: Stage, path: Path, chunk_rows: int, job: int) -> float:
    """Seconds of the same import as a Celery chord (import chunks, then verify chunks + total)."""
    from celery import chord

    from dxf_celery.examples import csvdata, csvtable

    b = stage.bench
    table = "bench_csv_chord"
    columns = csvdata.resolve_columns(path, None)
    csvtable.ensure_table(csvtable.target_for(stage.db_url).write, csvtable.build_table(table, columns))
    done_key = f"{b.DONE_KEY}:{job}"
    stage.redis.delete(done_key)
    start = time.monotonic()
    chunks = csvdata.plan_chunks(path, chunk_rows)
    header = [b.csv_import_chunk.s(str(path), table, job, c.ordinal, c.offset, c.length) for c in chunks]
    result = chord(header)(b.csv_verify.s(str(path), table, job))
    wait_for(lambda: stage.redis.exists(done_key), 1800, "the chord to finish", interval=0.01)
    elapsed = time.monotonic() - start
    del result  # its finaliser talks to Redis: let it run now (it is in a cycle), not at interpreter exit
    gc.collect()
    return elapsed


def direct_wakeups(stage: Stage) -> dict[str, Any]:
    """Per node, the scheduler wake-ups that reached its own wake queue as the lease holder."""
    got: dict[str, Any] = {}
    for reply in stage.bench.app.control.broadcast("dxf_node", reply=True, timeout=2) or []:
        for node, info in reply.items():
            if isinstance(info, dict):
                got[node] = {"holder": info.get("scheduler_lease"), "direct_wakeups": info.get("direct_wakeups")}
    return got
