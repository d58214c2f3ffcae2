"""``python -m bench``: every row of the performance table in one run, DXF next to its baselines.

Stages (each on a fresh ``dxf_bench_<pid>`` database, created and dropped via
:mod:`dxf_celery.storage.provision`; the broker's Redis db is FLUSHED):

1. PostgreSQL, 2 prefork nodes x 2 (+ beat, + 2 procrastinate workers if installed): rounds of
   raw Celery no-op / DXF no-op subtasks / Celery INSERT+COMMIT group / procrastinate, one task
   of many subtasks, submit -> first subtask running, csv_import vs a Celery chord, then a
   third node and many tiny 2-step tasks;
2. PostgreSQL, 2 nodes x 4 slots: pool time spent inside subtasks, with parallel subtasks
   (the type opts in) and with DXF's one subtask per task per node;
3. MariaDB and 4. SQLite: rounds of raw Celery / DXF no-op.

Prints the table and writes ``<results-dir>/<date>.json`` (``<date>-quick.json`` with --quick;
``--only ROW,...`` runs only those rows and adds ``-only-<rows>`` to the name).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import report
from bench.cluster import Cluster
from bench.databases import SERVERS

#: Sizes of the full run and of --quick (a smoke run: every row, tiny sizes, one round).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "rounds": 3,
        "raw": 1000,
        "dxf_tasks": 2,
        "dxf_subtasks": 300,
        "big": [(10_000, 45.0), (100_000, 75.0)],
        "latency": 20,
        "csv_rows": 100_000,
        "csv_chunk": 10_000,
        "small_tasks": 1000,
        "small_cap": 60.0,
        "pool": (4, 40, 0.05),
        "pool_long": (4, 40, 0.5),
    },
    "quick": {
        "rounds": 1,
        "raw": 200,
        "dxf_tasks": 1,
        "dxf_subtasks": 100,
        "big": [(300, 20.0), (1000, 20.0)],
        "latency": 5,
        "csv_rows": 5000,
        "csv_chunk": 1000,
        "small_tasks": 20,
        "small_cap": 30.0,
        "pool": (4, 6, 0.05),
        "pool_long": (4, 6, 0.2),
    },
}


#: The rows ``--only`` selects (the JSON keys they fill).
ROW_NAMES = ("noop", "latency", "csv_import", "small_tasks", "big_task", "pool_time")


def _procrastinate_available() -> bool:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def stage(
    args: argparse.Namespace,
    run_dir: Path,
    kind: str,
    *,
    nodes: int,
    slots: int,
    procrastinate: bool = False,
) -> Iterator[Any]:
    """Fresh database, flushed broker, ``nodes`` workers + beat running: yields a :class:`rows.Stage`."""
    from bench.databases import throwaway

    with throwaway(kind, run_dir, servers=args.servers) as url:
        yield from _stage(args, run_dir, kind, url, nodes=nodes, slots=slots, procrastinate=procrastinate)


def _stage(
    args: argparse.Namespace, run_dir: Path, kind: str, url: str, *, nodes: int, slots: int, procrastinate: bool
) -> Iterator[Any]:
    import redis
    from sqlalchemy import create_engine, text

    import bench.app as bench_app
    from bench.rows import Stage

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {bench_app.INSERT_TABLE} (i INTEGER)"))
    engine.dispose()
    client = redis.Redis.from_url(args.broker)
    client.flushdb()
    os.environ["DXF_BENCH_DB_URL"] = url
    bench_app.DB_URL = url
    bench_app.dxf.state.retarget(url)
    env = {"DXF_BENCH_BROKER": args.broker, "DXF_BENCH_DB_URL": url, "DXF_BENCH_SLOTS": str(slots)}
    papp = None
    if procrastinate:
        from sqlalchemy.engine import make_url

        env["DXF_BENCH_PG_DSN"] = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        os.environ["DXF_BENCH_PG_DSN"] = env["DXF_BENCH_PG_DSN"]
    cluster = Cluster(run_dir, env)
    try:
        if procrastinate:
            import bench.procrastinate_app as p_app

            papp = p_app.app
            papp.open()
            papp.schema_manager.apply_schema()
        names = [f"b{i + 1}@bench" for i in range(nodes)]
        for worker in names:
            cluster.worker(worker, slots)
        cluster.beat()
        if procrastinate:
            for i in range(2):
                cluster.procrastinate_worker(f"p{i + 1}")
        cluster.wait_nodes(bench_app.dxf.task_manager, set(names))
        st = Stage(cluster, bench_app, client, f"{kind}{time.time_ns()}", url)
        st.procrastinate = papp  # type: ignore[attr-defined]
        st.workers = names  # type: ignore[attr-defined]
        yield st
    finally:
        cluster.close()
        if papp is not None:
            papp.close()
        bench_app.dxf.state.dispose()
        client.close()
        from dxf_celery.examples import csvtable

        csvtable.dispose_targets()


def _warm_up(st: Any) -> None:
    """Pool processes import, connect and fork their engines once before anything is timed."""
    from bench import rows

    rows.raw_celery(st, 50)
    rows.dxf_noop(st, 2, 10)


def paired_rounds(st: Any, size: dict[str, Any], extra: bool, log: Any) -> dict[str, Any]:
    """Interleaved rounds: raw Celery, DXF, (INSERT group, procrastinate) in each round."""
    from bench import rows

    out: dict[str, list[float]] = {"raw_celery": [], "dxf": [], "ratio": []}
    if extra:
        out.update(celery_insert=[], procrastinate=[])
    for r in range(size["rounds"]):
        raw = rows.raw_celery(st, size["raw"])
        dxf = rows.dxf_noop(st, size["dxf_tasks"], size["dxf_subtasks"])["per_s"]
        out["raw_celery"].append(raw)
        out["dxf"].append(dxf)
        out["ratio"].append(dxf / raw)
        line = f"round {r + 1}: raw Celery {raw:.0f}/s, DXF {dxf:.0f}/s"
        if extra:
            ins = rows.celery_insert_group(st, size["dxf_tasks"] * size["dxf_subtasks"])
            out["celery_insert"].append(ins)
            line += f", Celery INSERT group {ins:.0f}/s"
            if st.procrastinate is not None:
                proc = rows.procrastinate_jobs(st, st.procrastinate, size["dxf_tasks"] * size["dxf_subtasks"])
                out["procrastinate"].append(proc)
                line += f", procrastinate {proc:.0f}/s"
        log(line)
    result: dict[str, Any] = {"rounds": out}
    for k, v in out.items():
        if v:
            result[f"{k}_median"] = statistics.median(v)
    if extra:
        pairs = zip(out["dxf"], out["celery_insert"], strict=True)
        result["ratio_vs_insert"] = statistics.median(d / i for d, i in pairs)
        if out.get("procrastinate"):
            result["ratio_vs_procrastinate"] = statistics.median(
                d / p for d, p in zip(out["dxf"], out["procrastinate"], strict=True)
            )
    return result


def _csv_rows(st: Any, run_dir: Path, size: dict[str, Any], log: Any) -> dict[str, Any]:
    """csv_import vs the same import as a Celery chord, interleaved."""
    from bench import rows
    from dxf_celery.examples import csvdata

    csv_path = csvdata.generate_csv(run_dir / "bench.csv", size["csv_rows"])
    dxf_s, chord_s = [], []
    for r in range(max(1, size["rounds"] - 2)):
        dxf_s.append(rows.csv_dxf(st, csv_path, size["csv_chunk"]))
        chord_s.append(rows.csv_chord(st, csv_path, size["csv_chunk"], 10**9 + r))
        log(f"csv round {r + 1}: DXF {dxf_s[-1]:.1f}s, chord {chord_s[-1]:.1f}s")
    return {
        "rows": size["csv_rows"],
        "dxf_s": dxf_s,
        "chord_s": chord_s,
        "dxf_median_s": statistics.median(dxf_s),
        "chord_median_s": statistics.median(chord_s),
        "speedup_vs_chord": statistics.median(c / d for d, c in zip(dxf_s, chord_s, strict=True)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import rows

    size = dict(SIZES["quick" if args.quick else "full"])
    if getattr(args, "small_tasks", None):
        size["small_tasks"] = args.small_tasks
    run_dir = Path(tempfile.mkdtemp(prefix="dxf-bench-"))
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": {"cpus": os.cpu_count(), "note": args.note},
        "sizes": {k: v for k, v in size.items()},
        "only": sorted(args.only),
        "noop": {},
    }
    with_proc = _procrastinate_available()
    if not with_proc:
        log("procrastinate is not installed (pip install -e '.[bench]'): its row is skipped")
    results["procrastinate_installed"] = with_proc
    kinds = [k for k in ("postgresql", "mariadb", "sqlite") if k in args.databases]
    only = set(args.only)

    def want(row: str) -> bool:
        return not only or row in only

    main_rows = ("noop", "latency", "csv_import", "small_tasks")
    if "postgresql" in kinds and any(want(r) for r in main_rows):
        log("stage: PostgreSQL, 2 nodes x 2 slots")
        with stage(args, run_dir, "postgresql", nodes=2, slots=2, procrastinate=with_proc and want("noop")) as st:
            _warm_up(st)
            if want("noop"):
                results["noop"]["postgresql"] = paired_rounds(st, size, True, log)
            if want("latency"):
                results["latency"] = rows.latency(st, size["latency"])
                log(f"latency: {results['latency']}")
            if want("csv_import"):
                results["csv_import"] = _csv_rows(st, run_dir, size, log)
            if want("small_tasks"):
                st.cluster.worker("b3@bench", 2)
                st.cluster.wait_nodes(st.dxf.task_manager, {"b1@bench", "b2@bench", "b3@bench"})
                results["small_tasks"] = rows.many_small_tasks(st, size["small_tasks"], size["small_cap"])
                log(f"small tasks: {results['small_tasks']}")
                results["direct_wakeups"] = rows.direct_wakeups(st)
                log(f"wake-ups received on the holder's own queue: {results['direct_wakeups']}")
    if "postgresql" in kinds and want("big_task"):
        results["big_task"] = []
        for n, cap in size["big"]:
            # A stage of its own: a capped task is dropped with its database instead of being
            # cancelled (reverting thousands of subtasks takes longer than the row itself).
            log(f"stage: PostgreSQL, 2 nodes x 2 slots, one task of {n} subtasks")
            with stage(args, run_dir, "postgresql", nodes=2, slots=2) as st:
                _warm_up(st)
                got = rows.big_task(st, n, cap, st.workers)
            log(f"one task of {n} subtasks: {got['done']} done in {got['seconds']:.0f}s, {got['per_s']:.0f}/s")
            results["big_task"].append(got)
    if "postgresql" in kinds and want("pool_time"):
        log("stage: PostgreSQL, 2 nodes x 4 slots (pool time)")
        with stage(args, run_dir, "postgresql", nodes=2, slots=4) as st:
            _warm_up(st)
            tasks, subtasks, sleep = size["pool"]
            results["pool_time"] = rows.pool_time(st, tasks, subtasks, sleep, slots_total=8)
            log(f"pool time (parallel subtasks): {results['pool_time']}")
            results["pool_time_one_at_a_time"] = rows.pool_time(st, tasks, subtasks, sleep, 8, parallel=False)
            log(f"pool time (one subtask per task per node, DXF's default): {results['pool_time_one_at_a_time']}")
            tasks, subtasks, sleep = size["pool_long"]
            results["pool_time_long"] = rows.pool_time(st, tasks, subtasks, sleep, slots_total=8)
            log(f"pool time (parallel subtasks, {sleep * 1000:.0f} ms each): {results['pool_time_long']}")
    for kind in kinds:
        if kind == "postgresql" or not want("noop"):
            continue
        log(f"stage: {kind}, 2 nodes x 2 slots")
        with stage(args, run_dir, kind, nodes=2, slots=2) as st:
            _warm_up(st)
            results["noop"][kind] = paired_rounds(st, size, False, log)
    if results["noop"]:
        results["throughput_ratio_vs_celery"] = {k: v["ratio_median"] for k, v in results["noop"].items()}
    results["wall_seconds"] = time.monotonic() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: every row, tiny sizes, one round")
    parser.add_argument(
        "--broker",
        default=os.environ.get("DXF_BENCH_BROKER", "redis://127.0.0.1:6379/3"),
        help="Redis URL (its db is FLUSHED; env DXF_BENCH_BROKER)",
    )
    parser.add_argument("--databases", default="postgresql,mariadb,sqlite", help="comma list (default: all three)")
    parser.add_argument("--postgresql", default=SERVERS["postgresql"], help="server URL without database")
    parser.add_argument("--mariadb", default=SERVERS["mariadb"], help="server URL without database")
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument(
        "--only",
        default="",
        help=f"comma list of rows to run (default: all): {','.join(ROW_NAMES)}",
    )
    parser.add_argument("--small-tasks", type=int, default=None, help="tasks of the tiny-tasks row (default by mode)")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    args.only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(args.only) - set(ROW_NAMES)
    if unknown:
        parser.error(f"--only: unknown rows {', '.join(sorted(unknown))} (rows: {', '.join(ROW_NAMES)})")
    args.servers = {"postgresql": args.postgresql.rstrip("/"), "mariadb": args.mariadb.rstrip("/")}
    os.environ["DXF_BENCH_BROKER"] = args.broker  # read when bench.app is first imported
    # SIGTERM unwinds like Ctrl-C: the stages' finally blocks stop the workers and drop the databases.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except (TimeoutError, RuntimeError) as err:
        print(f"bench failed: {err}", file=sys.stderr)
        return 1
    finally:
        gc.collect()  # Celery result objects say goodbye to Redis while the interpreter still can
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    # A partial run never overwrites the day's full results.
    name = day + ("-quick" if args.quick else "") + ("-only-" + "+".join(sorted(args.only)) if args.only else "")
    out = out_dir / f"{name}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.table(results))
    print(f"\nwritten: {out}")
    return 0
