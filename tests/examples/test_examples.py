"""The example task types end to end on an in-process cluster (LocalCluster) and real databases.

A test that steers a task in the middle (cancel, pause) holds the example's subtasks open with
a :class:`Gate` wrapped around the example's own step executor: the task is mid-way because
its subtasks wait for the test, never because a speed limit or a sleep was guessed to be slow
enough.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.db import PG_ADMIN_URL
from helpers.waiting import wait_until
from sqlalchemy import delete, inspect, select

from dxf_celery.context import Context
from dxf_celery.errors import TaskFailedError, TaskNotFoundError
from dxf_celery.examples import csv_import, csvdata, csvtable, noop
from dxf_celery.examples.csv_import import STEP_IMPORT, STEP_VERIFY, VerifyMismatchError
from dxf_celery.examples.csvdata import GENERATED_COLUMNS
from dxf_celery.proto import Subtask, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import BaseTaskExecutor
from dxf_celery.taskexecutor.execute import StepExecutor
from dxf_celery.taskexecutor.param import Param
from dxf_celery.taskexecutor.register import register_task_type
from dxf_celery.testing import LocalCluster

TABLE = "imported_orders"


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    # Other tests may clear the registries: register the example types again.
    csv_import.register()
    noop.register()
    yield
    csvtable.dispose_targets()


@pytest.fixture
def cluster(db_url: str) -> Iterator[LocalCluster]:
    tm = TaskManager(db_url)
    target = csvtable.Target(tm.read_engine, tm.write_engine)
    with target.write.begin() as conn:
        csvtable.build_table(TABLE, GENERATED_COLUMNS).drop(conn, checkfirst=True)
    tm.dispose()
    # No test here kills a node: a long node TTL keeps a live node that a loaded machine
    # slowed down from being taken for dead (its subtasks would run twice).
    with LocalCluster(db_url, nodes=2, slots=4, check_interval=0.02, node_ttl=60.0) as c:
        yield c


class Gate:
    """Lets the first ``free`` subtask runs through and holds the others until :meth:`open`.

    A held subtask waits on its context, so cancel and pause still stop it at once.
    """

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self._admitted = 0
        self._lock = threading.Lock()
        self._opened = threading.Event()

    def pass_through(self, ctx: Context) -> None:
        with self._lock:
            self._admitted += 1
            if self._admitted <= self.free:
                return
        while not self._opened.is_set():
            ctx.wait(0.01)
            ctx.check()

    def open(self) -> None:
        self._opened.set()


class _GatedImport(csv_import.ImportStepExecutor):
    def __init__(self, inner: csv_import.ImportStepExecutor, gate: Gate) -> None:
        super().__init__(inner.task, inner.meta, inner.target)
        self.gate = gate

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        self.gate.pass_through(ctx)
        super().run_subtask(ctx, subtask)


class _GatedCsvExtension(csv_import.CSVImportExecutorExtension):
    def __init__(self, target: csvtable.Target, gate: Gate) -> None:
        super().__init__(target)
        self.gate = gate

    def get_step_executor(self, task: Task) -> StepExecutor:
        step = super().get_step_executor(task)
        return _GatedImport(step, self.gate) if isinstance(step, csv_import.ImportStepExecutor) else step


class _GatedNoop(noop.NoopStepExecutor):
    def __init__(self, meta: noop.NoopMeta, gate: Gate) -> None:
        super().__init__(meta)
        self.gate = gate

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        self.gate.pass_through(ctx)
        super().run_subtask(ctx, subtask)


class _GatedNoopExtension(noop.NoopExecutorExtension):
    def __init__(self, meta: noop.NoopMeta, gate: Gate) -> None:
        super().__init__(meta)
        self.gate = gate

    def get_step_executor(self, task: Task) -> StepExecutor:
        return _GatedNoop(noop.NoopMeta.from_json(task.meta), self.gate)


@pytest.fixture
def import_gate(cluster: LocalCluster) -> Iterator[Gate]:
    """csv_import whose first two chunk imports run and the others wait for the gate."""
    gate = Gate(free=2)
    tm = cluster.task_manager
    target = csvtable.Target(tm.read_engine, tm.write_engine)

    def factory(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
        return BaseTaskExecutor(ctx, task, param, _GatedCsvExtension(target, gate))

    register_task_type(csv_import.TASK_TYPE, factory)
    yield gate
    gate.open()
    csv_import.register()


@pytest.fixture
def noop_gate(cluster: LocalCluster) -> Iterator[Gate]:
    """noop whose subtasks all wait for the gate."""
    gate = Gate()

    def factory(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
        return BaseTaskExecutor(ctx, task, param, _GatedNoopExtension(noop.NoopMeta.from_json(task.meta), gate))

    register_task_type(noop.TASK_TYPE, factory)
    yield gate
    gate.open()
    noop.register()


def table_rows(tm: TaskManager, task_id: int) -> int:
    table = csvtable.build_table(TABLE, GENERATED_COLUMNS)
    return csvtable.count_task_rows(tm.read_engine, table, task_id)


def test_csv_import_succeeds_with_exact_rows_and_checksum(cluster: LocalCluster, tmp_path: Path) -> None:
    path = csvdata.generate_csv(tmp_path / "orders.csv", 6000, seed=11)
    meta = csv_import.build_meta(path, TABLE, chunk_rows=500, columns=GENERATED_COLUMNS)
    task = cluster.submit_task("orders-1", csv_import.TASK_TYPE, meta=meta, concurrency=2)
    done = cluster.wait_task(task.id, timeout=120)
    assert done.state == TaskState.SUCCEED

    tm = cluster.task_manager
    subtasks = cluster.get_subtasks(task.id)
    imports = [s for s in subtasks if s.step == STEP_IMPORT]
    verifies = [s for s in subtasks if s.step == STEP_VERIFY]
    assert len(imports) >= 6 and len(verifies) == len(imports) + 1
    assert all(s.state == SubtaskState.SUCCEED for s in subtasks)
    assert {s.exec_id for s in imports} == set(cluster.node_ids)  # both nodes worked

    first = csvdata.plan_chunks(path, 10**9)[0]
    expected = csvdata.stats_of(csvdata.read_chunk(path, first, GENERATED_COLUMNS))
    assert expected.rows == 6000
    assert csv_import.result_of(subtasks) == expected
    assert table_rows(tm, task.id) == 6000
    # The table's rows are the CSV's rows, recomputed independently of the task's own checks.
    table = csvtable.build_table(TABLE, GENERATED_COLUMNS)
    with tm.read_engine.connect() as conn:
        cols = list(table.columns)[2:]
        in_table = csvdata.stats_of(tuple(r) for r in conn.execute(select(*cols)))
    assert in_table == expected
    # Summaries carry row counts and bytes for progress reports.
    progress = cluster.get_task_progress(task.id)
    assert progress.steps[STEP_IMPORT].row_count == 6000
    assert progress.steps[STEP_IMPORT].bytes == path.stat().st_size - first.offset
    # The frozen columns are in the task meta.
    assert json.loads(done.meta)["columns"][0] == {"name": "id", "type": "int"}


class _PairedImport(csv_import.ImportStepExecutor):
    """The first chunk a node imports waits until a second chunk runs on that node too."""

    def __init__(self, inner: csv_import.ImportStepExecutor, pairs: _Pairs) -> None:
        super().__init__(inner.task, inner.meta, inner.target)
        self.pairs = pairs

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        self.pairs.enter(ctx, subtask.exec_id)
        try:
            super().run_subtask(ctx, subtask)
        finally:
            self.pairs.leave(subtask.exec_id)


class _Pairs:
    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.first: set[str] = set()

    def enter(self, ctx: Context, node: str) -> None:
        with self.cv:
            self.now[node] += 1
            self.most[node] = max(self.most[node], self.now[node])
            self.cv.notify_all()
            if node in self.first:
                return
            self.first.add(node)
            # One at a time per node would wait here forever: the test would fail on the wait's bound.
            if not self.cv.wait_for(lambda: self.now[node] >= 2 or ctx.done(), timeout=60):
                raise AssertionError(f"no second chunk ran on {node} beside the first")

    def leave(self, node: str) -> None:
        with self.cv:
            self.now[node] -= 1


class _PairedCsvExtension(csv_import.CSVImportExecutorExtension):
    def __init__(self, target: csvtable.Target, pairs: _Pairs) -> None:
        super().__init__(target)
        self.pairs = pairs

    def get_step_executor(self, task: Task) -> StepExecutor:
        step = super().get_step_executor(task)
        return _PairedImport(step, self.pairs) if isinstance(step, csv_import.ImportStepExecutor) else step


def test_csv_import_runs_concurrency_chunks_at_once_on_each_node(cluster: LocalCluster, tmp_path: Path) -> None:
    """csv_import opts in to parallel subtasks: a node runs two chunks side by side (concurrency 2)."""
    pairs = _Pairs()
    tm = cluster.task_manager
    target = csvtable.Target(tm.read_engine, tm.write_engine)

    def factory(ctx: Context, task: Task, param: Param) -> BaseTaskExecutor:
        return BaseTaskExecutor(ctx, task, param, _PairedCsvExtension(target, pairs))

    register_task_type(csv_import.TASK_TYPE, factory)
    try:
        path = csvdata.generate_csv(tmp_path / "orders.csv", 4000, seed=13)
        meta = csv_import.build_meta(path, TABLE, chunk_rows=250, columns=GENERATED_COLUMNS)
        task = cluster.submit_task("orders-par", csv_import.TASK_TYPE, meta=meta, concurrency=2)
        done = cluster.wait_task(task.id, timeout=120)
    finally:
        csv_import.register()
    assert done.state == TaskState.SUCCEED
    assert table_rows(tm, task.id) == 4000
    assert pairs.first  # some node imported chunks
    assert all(pairs.most[node] == 2 for node in pairs.first), pairs.most  # two at once, never more


def test_corrupted_line_reverts_with_a_clear_error(cluster: LocalCluster, tmp_path: Path) -> None:
    path = csvdata.generate_csv(tmp_path / "orders.csv", 3000, seed=2)
    lines = path.read_bytes().split(b"\n")
    bad_offset = sum(len(line) + 1 for line in lines[:2500])
    lines[2500] = b"2500,only three,fields"
    path.write_bytes(b"\n".join(lines))
    meta = csv_import.build_meta(path, TABLE, chunk_rows=300, columns=GENERATED_COLUMNS)
    task = cluster.submit_task("orders-bad", csv_import.TASK_TYPE, meta=meta)
    with pytest.raises(TaskFailedError) as info:
        cluster.wait_task(task.id, timeout=120)
    failed = info.value.task
    assert failed.state == TaskState.REVERTED
    assert failed.error is not None and failed.error.type_name == "CSVFormatError"
    assert f"byte offset {bad_offset}" in str(failed.error)
    assert "has 3 fields, expected 6" in str(failed.error)
    # on_done deleted whatever the other chunks had imported.
    assert table_rows(cluster.task_manager, task.id) == 0


def test_missing_file_and_bad_meta_revert_at_planning(cluster: LocalCluster, tmp_path: Path) -> None:
    meta = csv_import.build_meta(tmp_path / "nope.csv", TABLE)
    task = cluster.submit_task("orders-missing", csv_import.TASK_TYPE, meta=meta)
    with pytest.raises(TaskFailedError, match="check csv_path"):
        cluster.wait_task(task.id, timeout=60)
    bad = cluster.submit_task("orders-badmeta", csv_import.TASK_TYPE, meta=b'{"csv_path": "x.csv"}')
    with pytest.raises(TaskFailedError, match="needs 'table'"):
        cluster.wait_task(bad.id, timeout=60)
    with pytest.raises(csv_import.InvalidImportMetaError, match="chunk_rows"):
        csv_import.build_meta("x.csv", TABLE, chunk_rows=0)


def _throttled(path: Path, chunk_rows: int, chunks_per_second: float) -> bytes:
    size = path.stat().st_size
    n = len(csvdata.plan_chunks(path, chunk_rows))
    speed = max(1, int(size / n * chunks_per_second))
    return csv_import.build_meta(path, TABLE, chunk_rows=chunk_rows, columns=GENERATED_COLUMNS, max_write_speed=speed)


def _imported(cluster: LocalCluster, task_id: int) -> int:
    return sum(1 for s in cluster.get_subtasks(task_id, STEP_IMPORT) if s.state == SubtaskState.SUCCEED)


def test_cancel_mid_import_reverts_and_cleans_the_table(
    cluster: LocalCluster, import_gate: Gate, tmp_path: Path
) -> None:
    path = csvdata.generate_csv(tmp_path / "orders.csv", 4000, seed=3)
    meta = csv_import.build_meta(path, TABLE, chunk_rows=200, columns=GENERATED_COLUMNS)
    task = cluster.submit_task("orders-cancel", csv_import.TASK_TYPE, meta=meta)
    wait_until(lambda: _imported(cluster, task.id) >= 2, what="two chunks imported")  # the others are held
    assert table_rows(cluster.task_manager, task.id) > 0
    assert cluster.cancel_task(task.id)
    with pytest.raises(TaskFailedError, match="cancelled by user") as info:
        cluster.wait_task(task.id, timeout=60)
    assert info.value.task.state == TaskState.REVERTED
    states = Counter(s.state for s in cluster.get_subtasks(task.id, STEP_IMPORT))
    assert states[SubtaskState.SUCCEED] < sum(states.values())  # it really stopped mid-way
    assert table_rows(cluster.task_manager, task.id) == 0


def test_pause_then_tampered_table_fails_verification(cluster: LocalCluster, import_gate: Gate, tmp_path: Path) -> None:
    """Rows deleted behind the task's back while it is paused: VERIFY catches it, the task reverts."""
    path = csvdata.generate_csv(tmp_path / "orders.csv", 3000, seed=4)
    task = cluster.submit_task("orders-tamper", csv_import.TASK_TYPE, meta=_throttled(path, 100, 50.0))
    wait_until(lambda: _imported(cluster, task.id) >= 2, what="two chunks imported")  # the others are held
    assert cluster.pause_task(task.id)
    paused = cluster.wait_task(task.id, timeout=60)
    assert paused.state == TaskState.PAUSED
    tm = cluster.task_manager
    table = csvtable.build_table(TABLE, GENERATED_COLUMNS)
    with tm.write_engine.begin() as conn:
        ids = list(conn.scalars(select(table.c.id).where(table.c._dxf_task == task.id).limit(3)))
        gone = conn.execute(delete(table).where(table.c._dxf_task == task.id, table.c.id.in_(ids))).rowcount
    assert gone == 3
    # Lift the speed limit live, then resume: the rest imports fast and VERIFY runs.
    cluster.modify_task(task.id, modifications=[_speed(0)])
    wait_until(lambda: cluster.get_task(task.id).state == TaskState.PAUSED, what="modification applied")
    assert json.loads(cluster.get_task(task.id).meta).get("max_write_speed", 0) == 0
    assert cluster.resume_task(task.id)
    import_gate.open()
    with pytest.raises(TaskFailedError) as info:
        cluster.wait_task(task.id, timeout=120)
    err = info.value.task.error
    assert err is not None and err.type_name == "VerifyMismatchError", err
    assert "does not match table" in str(err) or "rows were added or removed" in str(err)
    assert table_rows(tm, task.id) == 0


def _speed(to: int) -> object:
    from dxf_celery.proto import Modification, ModificationType

    return Modification(ModificationType.MAX_WRITE_SPEED.value, to)


def test_verify_step_executor_reports_every_kind_of_mismatch(db_url: str, tmp_path: Path) -> None:
    path = csvdata.generate_csv(tmp_path / "orders.csv", 1200, seed=5)
    tm = TaskManager(db_url)
    target = csvtable.Target(tm.read_engine, tm.write_engine)
    table = csvtable.build_table(TABLE, GENERATED_COLUMNS)
    with target.write.begin() as conn:
        table.drop(conn, checkfirst=True)
    csvtable.ensure_table(target.write, table)
    raw = csv_import.build_meta(path, TABLE, chunk_rows=400, columns=GENERATED_COLUMNS)
    meta = csv_import.ImportMeta.from_json(raw)
    task = tm.get_task_by_id(tm.create_task("v", csv_import.TASK_TYPE, 1, meta=meta.to_json()))
    ctx = Context.background()
    importer = csv_import.ImportStepExecutor(task, meta, target)
    verifier = csv_import.VerifyStepExecutor(task, meta, target)

    def sub(step: int, ordinal: int, raw: bytes) -> Subtask:
        return Subtask(0, task.id, step, task.type, SubtaskState.RUNNING, "n", ordinal, meta=raw)

    metas = []
    for c in csvdata.plan_chunks(path, 400):
        s = sub(STEP_IMPORT, c.ordinal, csv_import.ChunkMeta(c.ordinal, c.offset, c.length).to_json())
        importer.run_subtask(ctx, s)
        importer.run_subtask(ctx, s := sub(STEP_IMPORT, c.ordinal, s.meta))  # idempotent: twice
        metas.append(s.meta)
    for m in metas:
        verifier.run_subtask(ctx, s := sub(STEP_VERIFY, 1, m))
        assert json.loads(s.meta)["verified"] is True
    verifier.run_subtask(ctx, sub(STEP_VERIFY, 9, json.dumps({"check": "total", "rows": 1200}).encode()))
    with pytest.raises(VerifyMismatchError, match="holds 1200 rows of task"):
        verifier.run_subtask(ctx, sub(STEP_VERIFY, 9, json.dumps({"check": "total", "rows": 1201}).encode()))
    with target.write.begin() as conn:
        conn.execute(table.update().where(table.c._dxf_task == task.id, table.c.id == 5).values(city="Nowhere"))
    with pytest.raises(VerifyMismatchError, match=r"chunk 1 of .* does not match table"):
        verifier.run_subtask(ctx, sub(STEP_VERIFY, 1, metas[0]))
    tm.dispose()


def test_noop_runs_every_subtask_once_over_two_steps(cluster: LocalCluster, tmp_path: Path) -> None:
    record = tmp_path / "runs.log"
    meta = noop.noop_meta(steps=2, subtasks=12, sleep=0.01, record=str(record))
    task = cluster.submit_task("noop-1", noop.TASK_TYPE, meta=meta, concurrency=2)
    assert cluster.wait_task(task.id, timeout=60).state == TaskState.SUCCEED
    runs = Counter((int(p[0]), int(p[1])) for p in (line.split() for line in record.read_text().splitlines()))
    assert runs == Counter({(step, i): 1 for step in (1, 2) for i in range(1, 13)})
    nodes = {line.split()[2] for line in record.read_text().splitlines()}
    assert nodes == set(cluster.node_ids)


def test_noop_failure_and_bad_meta(cluster: LocalCluster) -> None:
    task = cluster.submit_task("noop-fail", noop.TASK_TYPE, meta=noop.noop_meta(subtasks=3, fail_ordinals=[2]))
    with pytest.raises(TaskFailedError, match="fails as asked"):
        cluster.wait_task(task.id, timeout=60)
    with pytest.raises(Exception, match="unknown fields"):
        noop.noop_meta(subtask=3)


def test_noop_cancel_stops_running_subtasks(cluster: LocalCluster, noop_gate: Gate) -> None:
    held = cluster.submit_task("noop-held", noop.TASK_TYPE, meta=noop.noop_meta(subtasks=4))
    wait_until(lambda: any(s.state == SubtaskState.RUNNING for s in cluster.get_subtasks(held.id)), what="running")
    assert cluster.cancel_task(held.id)
    with pytest.raises(TaskFailedError, match="cancelled by user"):
        cluster.wait_task(held.id, timeout=60)


def test_import_into_another_database(cluster: LocalCluster, tmp_path: Path) -> None:
    """``database_url`` sends the rows to a database other than the dxf one."""
    target_url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    path = csvdata.generate_csv(tmp_path / "orders.csv", 1500, seed=9)
    meta = csv_import.build_meta(path, "orders", database_url=target_url, chunk_rows=400)
    task = cluster.submit_task("orders-elsewhere", csv_import.TASK_TYPE, meta=meta)
    assert cluster.wait_task(task.id, timeout=60).state == TaskState.SUCCEED
    target = csvtable.target_for(target_url)
    columns = [csvdata.Column(c.name) for c in GENERATED_COLUMNS]  # no declared types: all text
    table = csvtable.build_table("orders", columns)
    assert csvtable.count_task_rows(target.read, table, task.id) == 1500
    with target.read.connect() as conn:
        assert conn.execute(select(table.c.id).where(table.c.id == "7")).scalar_one() == "7"
    assert not inspect(cluster.task_manager.read_engine).has_table("orders")


def test_history_keeps_no_target_password(cluster: LocalCluster, tmp_path: Path) -> None:
    # The target is the PostgreSQL server whatever the DXF database is: it trusts local users,
    # so a URL carrying a password still connects.
    target_url = PG_ADMIN_URL.replace("postgres@", "postgres:s3cret-pw@")
    assert "s3cret-pw" in target_url
    path = csvdata.generate_csv(tmp_path / "orders.csv", 300, seed=1)
    table_name = f"secret_orders_{os.getpid()}"  # the shared server database: one table per test process
    meta = csv_import.build_meta(path, table_name, database_url=target_url, chunk_rows=100)
    task = cluster.submit_task("orders-secret", csv_import.TASK_TYPE, meta=meta)
    assert cluster.wait_task(task.id, timeout=60).state == TaskState.SUCCEED
    tm = cluster.task_manager

    def in_history() -> bool:
        try:
            tm.get_task_by_id(task.id)
            return False
        except TaskNotFoundError:
            return True

    wait_until(in_history, what="the task moved to history")
    stored = tm.get_task_by_id_with_history(task.id).meta
    assert b"s3cret-pw" not in stored and json.loads(stored)["database_url"].startswith(
        "postgresql+psycopg://postgres:***@"
    )
    target = csvtable.target_for(target_url)
    with target.write.begin() as conn:
        csvtable.build_table(table_name, [csvdata.Column(c.name) for c in GENERATED_COLUMNS]).drop(conn)
