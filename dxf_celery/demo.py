"""``python -m dxf_celery.demo``: a real two-step job on two Celery worker nodes plus beat.

It generates a CSV, starts two ``celery worker`` processes and ``celery beat`` of
:mod:`dxf_celery.demo_app`, submits a ``csv_import`` task (parallel import, then a
verification of row counts and checksums), draws a progress bar per step, prints a summary,
and stops every process it started. By default everything is embedded (SQLite and kombu's
``filesystem://`` broker in a temporary folder); ``--broker``/``--database`` (or
``DXF_DEMO_BROKER``/``DXF_DEMO_DATABASE``) run the same demo on Redis and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from sqlalchemy.exc import SQLAlchemyError

from dxf_celery.errors import DXFError
from dxf_celery.proto import TASK_DONE_STATES, TaskState

APP_MODULE = "dxf_celery.demo_app"
TABLE = "demo_orders"
STEP_LABELS = {1: "import", 2: "verify"}


@dataclass
class Options:
    rows: int = 200_000
    chunk_rows: int = 10_000
    nodes: int = 2
    slots: int = 2
    pool: str = "prefork"
    broker: str | None = None
    database: str | None = None
    workdir: Path | None = None
    keep: bool = False
    timeout: float = 600.0
    start_timeout: float = 60.0


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m dxf_celery.demo",
        description="Run a two-step dxf-celery job (CSV import + verification) on two worker nodes plus beat.",
    )
    p.add_argument("--rows", type=int, default=200_000, help="CSV rows to generate (default 200000)")
    p.add_argument("--chunk-rows", type=int, default=10_000, help="about this many rows per subtask")
    p.add_argument("--nodes", type=int, default=2, help="worker node processes (default 2)")
    p.add_argument("--slots", type=int, default=2, help="slots (and pool processes) per node (default 2)")
    p.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"), help="Celery pool")
    p.add_argument(
        "--broker",
        default=os.environ.get("DXF_DEMO_BROKER"),
        help="broker URL (env DXF_DEMO_BROKER; default: filesystem:// in the work folder)",
    )
    p.add_argument(
        "--database",
        default=os.environ.get("DXF_DEMO_DATABASE"),
        help="dxf database URL (env DXF_DEMO_DATABASE; default: SQLite in the work folder)",
    )
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (CSV, logs, SQLite) afterwards")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    a = p.parse_args(argv)
    if a.rows < 1 or a.chunk_rows < 1 or a.nodes < 1 or a.slots < 1:
        p.error("--rows, --chunk-rows, --nodes and --slots must be >= 1")
    return Options(
        a.rows, a.chunk_rows, a.nodes, a.slots, a.pool, a.broker or None, a.database or None, a.dir, a.keep, a.timeout
    )


# ---------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """Every process the demo started; :meth:`stop` leaves none behind."""

    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str], log: Path) -> Child:
        with log.open("wb") as out:
            # Own session: a straggler's whole group (its pool children) can be killed at the end.
            proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def stop(self, grace: float = 20.0) -> list[str]:
        """SIGTERM to each main process (warm shutdown), wait, then SIGKILL the groups left."""
        report = []
        for c in self.children:
            if c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in self.children:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                report.append(f"{c.name} did not stop within {grace:.0f}s: killed")
            # Kill the group in any case: pool children of a main process that exited must not linger.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=5)
        return report


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", APP_MODULE, *args]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------- progress display


class ProgressView:
    """One bar per step: redrawn in place on a terminal, printed as lines otherwise."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self.last: dict[int, str] = {}
        self.last_print = 0.0
        self.drawn = 0

    def bar(self, done: int, total: int) -> str:
        filled = self.width * done // total if total else 0
        return "[" + "#" * filled + "." * (self.width - filled) + "]"

    def render(self, steps: dict[int, tuple[int, int, int]], state: str, final: bool = False) -> None:
        lines = {}
        for step, (done, total, rows) in sorted(steps.items()):
            label = STEP_LABELS.get(step, f"step {step}")
            pct = 100 * done // total if total else 0
            lines[step] = f"  {label:<7}{self.bar(done, total)} {pct:3d}%  {done}/{total} subtasks  {rows:,} rows"
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            text = [f"  task: {state:<12}"] + [lines[s] for s in sorted(lines)]
            for line in text:
                self.out.write("\x1b[2K" + line + "\n")
            self.drawn = len(text)
            self.out.flush()
            return
        now = time.monotonic()
        changed = {s: t for s, t in lines.items() if self.last.get(s) != t}
        if changed and (final or now - self.last_print >= 0.5):
            for s in sorted(changed):
                self.out.write(lines[s] + "\n")
            self.out.flush()
            self.last.update(changed)
            self.last_print = now


# ---------------------------------------------------------------------------- the demo


def say(out: IO[str], text: str) -> None:
    out.write(text + "\n")
    out.flush()


def run(opts: Options, out: TextIO = sys.stdout) -> int:
    own_dir = opts.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dxf-demo-")) if own_dir else Path(opts.workdir).resolve()  # type: ignore[arg-type]
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DXF_DEMO_DIR=str(workdir), DXF_DEMO_NODE_SLOTS=str(opts.slots))
    for key, value in (("DXF_DEMO_BROKER", opts.broker), ("DXF_DEMO_DATABASE", opts.database)):
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    # This process builds the same app as the workers, from the same environment.
    for key in ("DXF_DEMO_DIR", "DXF_DEMO_NODE_SLOTS", "DXF_DEMO_BROKER", "DXF_DEMO_DATABASE"):
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    procs = Processes()
    code = 1
    try:
        code = _run(opts, workdir, env, procs, out)
    except KeyboardInterrupt:
        say(out, "\ninterrupted: stopping the workers")
        code = 130
    except DXFError as err:
        say(out, f"error: {err}")
    except SQLAlchemyError as err:
        say(out, f"error: the database failed: {str(err).splitlines()[0]}; check --database")
    finally:
        for line in procs.stop():
            say(out, line)
        if procs.children:
            say(out, f"stopped {len(procs.children)} processes ({opts.nodes} workers and beat); none left running")
        if own_dir and not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif opts.keep:
            say(
                out,
                f"work folder kept: {workdir} (CSV, worker and beat logs"
                f"{', SQLite database' if not opts.database else ''})",
            )
            db = " DXF_DEMO_DATABASE=<your --database>" if opts.database else ""  # never print a password
            say(out, f"  look around: DXF_DEMO_DIR={workdir}{db} celery -A {APP_MODULE} dxf list")
    return code


def _run(opts: Options, workdir: Path, env: dict[str, str], procs: Processes, out: TextIO) -> int:
    from dxf_celery.examples import csv_import, csvdata, csvtable
    from dxf_celery.storage import safe_url, utcnow

    csv_path = workdir / "orders.csv"
    t0 = time.monotonic()
    csvdata.generate_csv(csv_path, opts.rows, seed=42)
    size = csv_path.stat().st_size
    say(out, f"dxf-celery demo: import {opts.rows:,} rows ({size / 1e6:.1f} MB of CSV) on {opts.nodes} worker nodes")
    say(out, f"  work folder: {workdir}")

    from dxf_celery.demo_app import app, dxf

    say(out, f"  broker:   {_broker_text(app)}")
    say(out, f"  database: {safe_url(dxf.settings.database_url)}")
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0, interval_step=1)
    except Exception as err:
        say(out, f"error: cannot reach the broker ({err}); start it or pass another --broker")
        return 1
    dxf.migrate()
    tm = dxf.task_manager

    started_at = utcnow()
    for i in range(1, opts.nodes + 1):
        args = celery_command(
            "worker",
            "-n",
            f"demo{i}@%h",
            "--pool",
            opts.pool,
            "--concurrency",
            str(opts.slots),
            "--loglevel",
            "WARNING",
        )
        procs.start(f"worker demo{i}", args, env, workdir / f"worker{i}.log")
    procs.start("beat", celery_command("beat", "--loglevel", "WARNING"), env, workdir / "beat.log")
    say(out, f"  started {opts.nodes} workers ({opts.pool} pool, {opts.slots} slots each) and beat; waiting for them")

    host = socket.gethostname()
    wanted = {f"demo{i}@{host}" for i in range(1, opts.nodes + 1)}
    deadline = time.monotonic() + opts.start_timeout
    while True:
        nodes = [n.id for n in tm.get_all_nodes() if n.id in wanted and n.heartbeat and n.heartbeat >= started_at]
        if len(nodes) >= opts.nodes:
            break
        failed = procs.dead()
        if failed or time.monotonic() > deadline:
            c = failed[0] if failed else procs.children[0]
            why = f"exited with code {c.proc.returncode}" if failed else f"not registered after {opts.start_timeout}s"
            say(out, f"error: {c.name} {why}; its log ({c.log}):\n{tail(c.log)}")
            return 1
        time.sleep(0.2)
    say(out, f"  nodes up: {', '.join(sorted(nodes))}")

    expected = csvdata.stats_of(
        csvdata.read_chunk(csv_path, csvdata.plan_chunks(csv_path, 10**12)[0], csvdata.GENERATED_COLUMNS)
    )
    meta = csv_import.build_meta(csv_path, TABLE, chunk_rows=opts.chunk_rows, columns=csvdata.GENERATED_COLUMNS)
    key = f"demo-import-{int(time.time() * 1000)}"
    submitted = time.monotonic()
    task = dxf.submit_task(key, csv_import.TASK_TYPE, meta=meta, concurrency=opts.slots)
    say(out, f"submitted task {task.id} ({key}): step 1 imports chunks in parallel, step 2 verifies them\n")

    view = ProgressView(out)
    final = task
    while True:
        progress = dxf.get_task_progress(task.id)
        final = progress.task
        steps = {s: (p.finished, p.total, p.row_count) for s, p in progress.steps.items() if s > 0}
        done = final.state in TASK_DONE_STATES or final.state == TaskState.PAUSED
        view.render(steps, final.state.value, final=done)
        if done:
            break
        failed = procs.dead()
        if failed:
            c = failed[0]
            say(out, f"error: {c.name} exited with code {c.proc.returncode}; its log:\n{tail(c.log)}")
            return 1
        if time.monotonic() - submitted > opts.timeout:
            say(out, f"error: task {task.id} still {final.state.value} after {opts.timeout:.0f}s; cancelling it")
            dxf.cancel_task(task.id)
            return 1
        time.sleep(0.2)
    elapsed = time.monotonic() - submitted

    subtasks = dxf.get_subtasks(task.id)
    say(out, "")
    if final.state != TaskState.SUCCEED:
        say(out, f"task {task.id} ended {final.state.value}: {final.error}")
        return 1
    result = csv_import.result_of(subtasks)
    meta_obj = csv_import.ImportMeta.from_json(final.meta)
    table = csvtable.build_table(TABLE, meta_obj.columns)
    in_table = csvtable.count_task_rows(tm.read_engine, table, task.id)
    ok = result == expected and in_table == expected.rows
    say(out, "summary")
    say(
        out,
        f"  task        {task.id} ({key}) {final.state.value} in {elapsed:.1f}s "
        f"(whole demo {time.monotonic() - t0:.1f}s)",
    )
    speed = in_table / elapsed if elapsed > 0 else 0.0
    say(out, f"  rows        {in_table:,} in table {TABLE!r} (CSV: {expected.rows:,}), {speed:,.0f} rows/s")
    say(out, f"  checksum    {result.checksum_hex} (CSV: {expected.checksum_hex}) -> {'ok' if ok else 'MISMATCH'}")
    per_node: dict[str, Counter[int]] = {}
    for s in subtasks:
        per_node.setdefault(s.exec_id, Counter())[s.step] += 1
    for node, counts in sorted(per_node.items()):
        parts = ", ".join(f"{counts[s]} {STEP_LABELS.get(s, s)}" for s in sorted(counts))
        say(out, f"  {node:<30} ran {parts} subtasks")
    return 0 if ok else 1


def _broker_text(app: object) -> str:
    conf = getattr(app, "conf", None)
    url = str(conf.broker_url) if conf is not None else "?"
    if url.startswith("filesystem"):
        return "filesystem:// (kombu, embedded: no server)"
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C so the finally block stops the workers.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
