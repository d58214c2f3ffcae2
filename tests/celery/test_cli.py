"""`celery -A proj dxf ...` through click's CliRunner on real databases, plus one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from helpers.celery_apps.harness import CeleryProcesses
from helpers.celery_apps.types import e2e_meta, release
from helpers.waiting import wait_until

from dxf_celery import DXF, handle
from dxf_celery.cli import dxf
from dxf_celery.proto import MAX_PRIORITY, MIN_PRIORITY, NORMAL_PRIORITY, TaskState
from dxf_celery.storage import TaskManager

REDIS_URL = os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")


@pytest.fixture
def app(db_url: str) -> Celery:
    app = Celery("cli_test", broker="memory://", set_as_current=False)
    app.conf.dxf_database_url = db_url
    return app


def run(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    return CliRunner().invoke(dxf, list(args), obj=obj, catch_exceptions=False)


def test_list_show_progress_and_json(app: Celery, task_manager: TaskManager) -> None:
    assert run(app, "list").output.strip() == "no tasks"
    t1 = handle.submit_task(task_manager, "import-1", "csv_import", meta=b'{"a": 1}', concurrency=1)
    handle.submit_task(task_manager, "import-2", "noop", priority=10)
    out = run(app, "list")
    assert out.exit_code == 0
    lines = out.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "KEY", "TYPE", "STATE"]
    assert "import-2" in lines[1] and "import-1" in lines[2]  # rank order: priority first
    data = json.loads(run(app, "list", "--json", "--state", "pending").output)
    assert {d["key"] for d in data} == {"import-1", "import-2"}
    assert run(app, "list", "--state", "running").output.strip() == "no tasks"

    for ref in ("import-1", str(t1.id)):
        shown = run(app, "show", ref)
        assert shown.exit_code == 0, shown.output
        assert "csv_import" in shown.output and "pending" in shown.output
    detail = json.loads(run(app, "show", "import-1", "--json", "--subtasks").output)
    assert detail["meta"] == {"a": 1} and detail["subtasks"] == [] and detail["progress"] == {}
    prog = json.loads(run(app, "progress", "import-1", "--json").output)
    assert prog["state"] == "pending"


def test_unknown_key_and_bad_input_are_one_line_errors(app: Celery, task_manager: TaskManager) -> None:
    for args in (["show", "nope"], ["cancel", "nope"], ["wait", "nope"], ["progress", "12345"]):
        res = run(app, *args)
        assert res.exit_code == 1, (args, res.output)
        assert "no task with key or id" in res.output and "Traceback" not in res.output
    res = run(app, "list", "--state", "bogus")
    assert res.exit_code == 2 and "unknown state 'bogus'" in res.output
    res = run(app, "submit", "k", "noop", "--meta", "{not json")
    assert res.exit_code == 2 and "not JSON" in res.output
    res = run(app, "modify", "k")
    assert res.exit_code == 2 and "nothing to modify" in res.output


def test_submit_steer_modify_and_state_errors(app: Celery, task_manager: TaskManager, tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text('{"subtasks": 3}')
    res = run(app, "submit", "job-1", "noop", "--meta-file", str(meta), "--concurrency", "1", "--priority", "100")
    assert res.exit_code == 0, res.output
    task = handle.get_task(task_manager, "job-1")
    assert task.meta == b'{"subtasks": 3}' and task.priority == 100

    res = run(app, "submit", "job-1", "noop")
    assert res.exit_code == 1 and "job-1" in res.output  # keys are unique

    assert run(app, "resume", "job-1").exit_code == 1  # not paused
    res = run(app, "pause", "job-1")
    assert res.exit_code == 0 and "pause requested" in res.output
    assert handle.get_task(task_manager, "job-1").state == TaskState.PAUSING
    res = run(app, "modify", "job-1", "--max-node-count", "2")
    assert res.exit_code == 1 and "only pending, running, paused" in res.output
    res = run(app, "cancel", "job-1")
    assert res.exit_code == 1 and "it is pausing" in res.output

    run(app, "submit", "job-0", "noop", "--max-node-count", "3")
    res = run(app, "modify", "job-0", "--max-node-count", "0")  # 0 removes the limit
    assert res.exit_code == 0, res.output
    assert handle.get_task(task_manager, "job-0").modify_param is not None
    assert run(app, "modify", "job-0", "--max-node-count", "-1").exit_code == 2

    run(app, "submit", "job-2", "noop")
    res = run(app, "modify", "job-2", "--concurrency", "1", "--max-node-count", "2")
    assert res.exit_code == 0, res.output
    assert handle.get_task(task_manager, "job-2").state == TaskState.MODIFYING
    res = run(app, "resolve", "job-2")
    assert res.exit_code == 1 and "awaiting-resolution" in res.output
    run(app, "submit", "job-3", "noop")
    assert run(app, "cancel", "job-3").exit_code == 0
    assert handle.get_task(task_manager, "job-3").state == TaskState.CANCELLING


def test_priority_bounds_are_protos(app: Celery, task_manager: TaskManager) -> None:
    for bad in (MIN_PRIORITY - 1, MAX_PRIORITY + 1):
        res = run(app, "submit", f"p{bad}", "noop", "--priority", str(bad))
        assert res.exit_code == 2 and f"{MIN_PRIORITY}<=x<={MAX_PRIORITY}" in res.output, res.output
    for ok in (MIN_PRIORITY, MAX_PRIORITY):
        assert run(app, "submit", f"p{ok}", "noop", "--priority", str(ok)).exit_code == 0
        assert handle.get_task(task_manager, f"p{ok}").priority == ok
    assert run(app, "submit", "p-default", "noop").exit_code == 0
    assert handle.get_task(task_manager, "p-default").priority == NORMAL_PRIORITY


def test_the_database_of_an_attached_dxf_wins(db_url: str, task_manager: TaskManager) -> None:
    """With ``DXF(app, database_url=...)`` and no ``dxf_database_url`` in the conf, the CLI uses the DXF's."""
    app = Celery("cli_dxf", broker="memory://", set_as_current=False)
    DXF(app, database_url=db_url)
    handle.submit_task(task_manager, "via-dxf", "noop")
    res = run(app, "list")
    assert res.exit_code == 0 and "via-dxf" in res.output, res.output
    res = run(app, "cancel", "via-dxf")  # a steering command also sends the DXF's wake-up
    assert res.exit_code == 0, res.output
    assert handle.get_task(task_manager, "via-dxf").state == TaskState.CANCELLING


def test_wait_exit_codes(app: Celery, task_manager: TaskManager) -> None:
    t = handle.submit_task(task_manager, "w1", "noop")
    res = run(app, "wait", "w1", "--timeout", "0.2", "--interval", "0.05")
    assert res.exit_code == 3 and "still pending" in res.output
    task_manager.switch_task_step(task_manager.get_task_by_id(t.id), TaskState.RUNNING, 1, [])
    task_manager.succeed(t.id)
    res = run(app, "wait", "w1", "--timeout", "5", "--interval", "0.05")
    assert res.exit_code == 0 and "succeed" in res.output

    t2 = handle.submit_task(task_manager, "w2", "noop")
    task_manager.fail(t2.id, TaskState.PENDING, RuntimeError("boom"))
    res = run(app, "wait", "w2", "--timeout", "5", "--interval", "0.05")
    assert res.exit_code == 1 and "boom" in res.output

    handle.submit_task(task_manager, "w3", "noop")
    task_manager.request_pause(handle.get_task(task_manager, "w3").id)
    task_manager.finish_pausing(handle.get_task(task_manager, "w3").id)
    res = run(app, "wait", "w3", "--interval", "0.05")
    assert res.exit_code == 4 and "resume" in res.output


def test_nodes_and_migrate(app: Celery, task_manager: TaskManager, tmp_path: Path) -> None:
    assert "no nodes registered" in run(app, "nodes").output
    task_manager.init_meta("celery@a", "", 4)
    task_manager.init_meta("celery@b", "bg", 8)
    out = run(app, "nodes").output
    assert "celery@a" in out and "0/4" in out and "bg" in out
    assert {n["id"] for n in json.loads(run(app, "nodes", "--json").output)} == {"celery@a", "celery@b"}

    fresh = Celery("cli_fresh", broker="memory://", set_as_current=False)
    fresh.conf.dxf_database_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    res = run(fresh, "migrate")
    assert res.exit_code == 0 and "fresh.db" in res.output
    assert run(fresh, "list").output.strip() == "no tasks"


def test_database_down_is_a_clear_error(tmp_path: Path) -> None:
    app = Celery("cli_down", broker="memory://", set_as_current=False)
    app.conf.dxf_database_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    res = run(app, "list")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "127.0.0.1" in res.output
    app.conf.dxf_database_url = "notadb://x"
    res = run(app, "list")
    assert res.exit_code == 1 and "Traceback" not in res.output
    bare = Celery("cli_bare", broker="memory://", set_as_current=False)
    res = run(bare, "list")
    assert res.exit_code == 1 and "has no DXF: call DXF(app)" in res.output


def test_real_celery_subprocess(tmp_path: Path) -> None:
    """`celery -A dxf_celery.demo_app dxf ...` goes through Celery's own CLI and the entry point."""
    db = f"sqlite:///{tmp_path / 'sub.db'}"
    env = dict(os.environ, DXF_DEMO_DATABASE=db, DXF_DEMO_DIR=str(tmp_path / "demo"))
    celery = [sys.executable, "-m", "celery", "-A", "dxf_celery.demo_app"]
    res = subprocess.run([*celery, "dxf", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [*celery, "dxf", "submit", "sub-1", "noop", "--meta", '{"subtasks": 2}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*celery, "dxf", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "sub-1" in res.stdout and "noop" in res.stdout
    res = subprocess.run([*celery, "dxf", "show", "missing"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "no task with key or id 'missing'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.celery
@pytest.mark.slow
def test_cli_drives_real_workers(tmp_path: Path) -> None:
    """submit --wait, pause, wait (exit 4), resume, nodes: against two real workers and beat.

    The task that is paused holds its subtasks open until the test releases them (a file the
    ``e2e`` type waits for), so it is still running when ``pause`` comes however slow each
    CLI call is; nothing here depends on how long a subtask takes.
    """
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"  # migrated by the CLI below
    # Redis, not kombu's filesystem transport: a worker of that one can read a message file
    # before it is written and die on the empty JSON (kombu#1551), seen here under load.
    flushed = redis.Redis.from_url(REDIS_URL)
    flushed.flushdb()  # no message of an earlier test may reach these workers
    flushed.close()
    env = {"DXF_E2E_BROKER": REDIS_URL, "DXF_E2E_DB_URL": db_url}
    record, hold = tmp_path / "runs.log", tmp_path / "release-cli-2"
    tm = TaskManager(db_url)
    procs = CeleryProcesses(tmp_path, env, tm)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return procs.celery("dxf", *args)

    def workers_alive() -> None:
        dead = [p.name for p in procs.procs.values() if not p.alive()]
        assert not dead, f"{dead} exited early:\n{procs.logs()}"

    try:
        res = cli("migrate")
        assert res.returncode == 0, res.stdout + res.stderr
        for i in (1, 2):
            procs.start_worker(f"cli{i}@e2e", concurrency=2, slots=2, wait=False)
        procs.start_beat()

        def both_nodes() -> bool:
            workers_alive()
            listed = json.loads(cli("nodes", "--json").stdout)
            return {n["id"] for n in listed} == {"cli1@e2e", "cli2@e2e"} and {n["slots"] for n in listed} == {2}

        wait_until(both_nodes, 60, interval=0.3, what="both workers listed by `dxf nodes --json`")
        table = cli("nodes").stdout
        assert "cli1@e2e" in table and "cli2@e2e" in table and "/2" in table, table

        meta = e2e_meta(str(record), steps=2, subtasks=6, sleep=0).decode()
        res = procs.celery(
            "dxf",
            "submit",
            "cli-1",
            "e2e",
            "--meta",
            meta,
            "--concurrency",
            "2",
            "--wait",
            "--timeout",
            "120",
            timeout=180,
        )
        assert res.returncode == 0, res.stdout + res.stderr + procs.logs()
        assert "task 1 (cli-1) succeed" in res.stdout
        shown = json.loads(cli("show", "cli-1", "--json", "--subtasks").stdout)
        assert shown["state"] == "succeed" and len(shown["subtasks"]) == 12
        # Ran on the registered nodes (spreading itself is pinned by the cluster and e2e tests).
        assert {s["exec_id"] for s in shown["subtasks"]} <= {"cli1@e2e", "cli2@e2e"}, shown["subtasks"]

        meta = e2e_meta(str(record), steps=1, subtasks=8, hold=hold).decode()
        assert cli("submit", "cli-2", "e2e", "--meta", meta).returncode == 0

        def running() -> bool:
            workers_alive()
            state: str = json.loads(cli("show", "cli-2", "--json").stdout)["state"]
            return state == "running"

        wait_until(running, 60, interval=0.2, what="cli-2 running")
        res = cli("pause", "cli-2")
        assert res.returncode == 0 and "pause requested for task 2 (cli-2)" in res.stdout, res.stdout + res.stderr
        res = procs.celery("dxf", "wait", "cli-2", "--timeout", "120", timeout=180)
        assert res.returncode == 4 and "is paused" in res.stdout, res.stdout + res.stderr + procs.logs()
        paused = json.loads(cli("show", "cli-2", "--json", "--subtasks").stdout)
        assert paused["state"] == "paused" and all(s["state"] != "running" for s in paused["subtasks"]), paused
        assert cli("resume", "cli-2").returncode == 0
        release(hold)
        res = procs.celery("dxf", "wait", "cli-2", "--timeout", "120", timeout=180)
        assert res.returncode == 0 and "task 2 (cli-2) succeed" in res.stdout, res.stdout + res.stderr + procs.logs()
    finally:
        procs.close()
        tm.dispose()


def test_purge_deletes_old_history_only(app: Celery, task_manager: TaskManager) -> None:
    done = handle.submit_task(task_manager, "old-1", "noop")
    live = handle.submit_task(task_manager, "live-1", "noop")
    assert task_manager.fail(done.id, TaskState.PENDING, None)
    assert task_manager.transfer_tasks_to_history([task_manager.get_task_by_id(done.id)]) == 1
    kept = run(app, "purge", "--older-than", "1")
    assert kept.exit_code == 0 and "purged 0 finished tasks" in kept.output, kept.output
    purged = run(app, "purge", "--older-than", "0")
    assert purged.exit_code == 0 and "purged 1 finished tasks" in purged.output, purged.output
    assert [t.key for t in handle.list_tasks(task_manager)] == [live.key]
    bad = run(app, "purge", "--older-than", "-1")
    assert bad.exit_code == 2 and "-1" in bad.output


def test_migrate_to_an_unknown_revision_is_one_line(app: Celery) -> None:
    res = CliRunner().invoke(
        dxf, ["migrate", "--revision", "nosuchrev"], obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    )
    assert res.exit_code == 1 and res.exception is not None and isinstance(res.exception, SystemExit)
    assert "cannot migrate to revision 'nosuchrev'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_show_says_why_a_task_waits_for_a_node(
    app: Celery, task_manager: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="dxf_celery.handle"):
        assert run(app, "submit", "gpu-1", "noop", "--target-scope", "gpu").exit_code == 0
    assert "no worker node is registered" in caplog.text
    assert "no worker node is registered" in run(app, "show", "gpu-1").output
    task_manager.init_meta("plain@host", "", 4)
    assert "no node has the role 'gpu'" in run(app, "show", "gpu-1").output
    task_manager.init_meta("gpu@host", "gpu", 4)
    assert "waiting" not in run(app, "show", "gpu-1").output


def test_show_says_when_no_live_worker_registered_the_type(
    app: Celery, task_manager: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    task_manager.init_meta("plain@host", "", 4, task_types=["noop"])
    with caplog.at_level("WARNING", logger="dxf_celery.handle"):
        assert run(app, "submit", "rep-1", "report").exit_code == 0
    assert "no live worker registered the task type 'report'" in caplog.text
    shown = run(app, "show", "rep-1").output
    waiting = [line for line in shown.splitlines() if line.startswith("waiting")]
    assert len(waiting) == 1 and "no live worker registered the task type 'report'" in waiting[0], shown
    detail = json.loads(run(app, "show", "rep-1", "--json").output)
    assert detail["waiting"].startswith("no live worker registered the task type 'report'")
    task_manager.init_meta("reports@host", "", 4, task_types=["report"])
    assert "waiting" not in run(app, "show", "rep-1").output
    assert json.loads(run(app, "show", "rep-1", "--json").output)["waiting"] is None


@pytest.mark.parametrize("command", ["submit", "show", "cancel", "pause", "wait"])
def test_an_unencodable_key_is_one_line(app: Celery, task_manager: TaskManager, command: str) -> None:
    """A non-UTF-8 byte in argv reaches Python as a lone surrogate (surrogateescape)."""
    args = [command, "bad-\udcff", *(["noop"] if command == "submit" else [])]
    res = run(app, *args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "lone surrogate" in lines[0] and "\\udcff" in lines[0], res.output
    assert "Traceback" not in res.output
    assert handle.list_tasks(task_manager) == []
