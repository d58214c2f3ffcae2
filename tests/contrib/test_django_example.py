"""The Django example project (examples/django_project) against PostgreSQL, in subprocesses.

Its own test suite runs under Django's test runner (rollback leaves no task, commit runs it on
a LocalCluster and on a real ``celery worker``, the admin renders and cancels, nothing reaches
the non-test database); ``manage.py migrate`` is checked from an empty database, twice.
Subprocesses, because Django can be configured once per process (tests/test_contrib.py does).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.db import PG_ADMIN_URL, throwaway_postgres_database
from helpers.paths import REPO_ROOT
from helpers.storage import alembic_head, alembic_revisions
from sqlalchemy import create_engine, inspect, text

from dxf_celery.storage import migrate
from dxf_celery.storage.tables import metadata

pytest.importorskip("django")

ROOT = REPO_ROOT
PROJECT = ROOT / "examples" / "django_project"
DXF_TABLES = {t.name for t in metadata.sorted_tables} | {"dxf_alembic_version"}
BROKER = os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the project; dropped afterwards."""
    with throwaway_postgres_database("djex", also_drop=("test_{name}",)) as name:
        yield name


def _url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def manage(db_name: str, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 600) -> str:
    env = dict(os.environ)
    env.update({"DJANGO_DB_NAME": db_name, "CELERY_BROKER_URL": BROKER, "PYTHONPATH": str(PROJECT)})
    env.update(extra_env or {})
    proc = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=str(PROJECT), env=env, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def _tables(name: str) -> set[str]:
    engine = create_engine(_url(name))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _scalar(name: str, sql: str) -> object:
    engine = create_engine(_url(name))
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_example_project_tests_pass_under_djangos_runner(empty_db: str) -> None:
    # The non-test database has the DXF tables, so "nothing reached it" is checked for real.
    manage(empty_db, "migrate", "--noinput")
    out = manage(empty_db, "test", "--noinput", "-v", "2", extra_env={"DXF_EXAMPLE_REAL_DB_MIGRATED": "1"})
    assert "Ran 9 tests" in out and "\nOK" in out, out[-4000:]
    for name in (
        "test_rollback_leaves_neither_order_nor_task",
        "test_committed_order_runs_on_a_real_worker",
        "test_cancel_action_cancels_a_running_task",
        "test_submits_reach_the_test_database_only",
        "test_admin_changelist_and_task_page",
    ):
        # "name (module.Class.name) ... ok"; log lines the test prints may stand before its verdict
        verdict = re.search(rf"^{name} \([\w.]+\) \.\.\. .*?(ok|FAIL|ERROR|skipped[^\n]*)$", out, re.M | re.S)
        assert verdict is not None and verdict.group(1) == "ok", name
    assert _scalar(empty_db, "SELECT count(*) FROM dxf_task") == 0
    assert _scalar(empty_db, "SELECT count(*) FROM dxf_task_history") == 0


def test_migrate_from_empty_creates_every_dxf_table_and_again_is_a_noop(empty_db: str) -> None:
    assert not _tables(empty_db) & DXF_TABLES
    sql = manage(empty_db, "sqlmigrate", "dxf_celery", "0001")
    for table in DXF_TABLES:
        assert f"CREATE TABLE {table} (" in sql, table
    assert "INSERT INTO dxf_alembic_version (version_num) VALUES ('0001')" in sql
    sql = manage(empty_db, "sqlmigrate", "dxf_celery", "0002")
    assert "ALTER TABLE dxf_node ADD COLUMN task_types TEXT" in sql, sql
    assert "UPDATE dxf_alembic_version SET version_num='0002' WHERE dxf_alembic_version.version_num = '0001'" in sql
    shown = manage(empty_db, "showmigrations", "dxf_celery")
    assert "[ ] 0001_initial" in shown and "[ ] 0002_node_task_types" in shown

    applied = manage(empty_db, "migrate", "--noinput")
    # One Django migration per Alembic revision, and migrate stamps the newest.
    for revision, _ in alembic_revisions():
        assert re.search(rf"Applying dxf_celery\.{revision}_\w+\.\.\. OK", applied), (revision, applied)
    assert _tables(empty_db) >= DXF_TABLES
    assert _scalar(empty_db, "SELECT version_num FROM dxf_alembic_version") == alembic_head()
    assert "[X] 0001_initial" in manage(empty_db, "showmigrations", "dxf_celery")

    again = manage(empty_db, "migrate", "--noinput")
    assert "No migrations to apply." in again
    assert _tables(empty_db) >= DXF_TABLES
    # Django's autodetector agrees with the unmanaged models shipped in the migration.
    manage(empty_db, "makemigrations", "--check", "--dry-run", "dxf_celery")

    manage(empty_db, "migrate", "dxf_celery", "zero", "--noinput")
    assert not (_tables(empty_db) & DXF_TABLES) - {"dxf_alembic_version"}
    manage(empty_db, "migrate", "dxf_celery", "--noinput")
    assert _tables(empty_db) >= DXF_TABLES


def test_migrate_adopts_tables_made_by_celery_dxf_migrate(empty_db: str) -> None:
    """A project that ran ``celery dxf migrate`` before keeps its tables and rows."""
    migrate(_url(empty_db))
    engine = create_engine(_url(empty_db))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO dxf_node (host, role, cpu_count) VALUES ('old@host', '', 2)"))
    engine.dispose()
    manage(empty_db, "migrate", "--noinput")
    assert _scalar(empty_db, "SELECT count(*) FROM dxf_node") == 1
    assert _scalar(empty_db, "SELECT version_num FROM dxf_alembic_version") == alembic_head()


def test_manage_py_dxf_commands(empty_db: str) -> None:
    """``manage.py dxf`` runs the ``celery dxf`` commands on the project's app, plus migrate and purge."""
    manage(empty_db, "migrate", "--noinput")
    assert "no tasks" in manage(empty_db, "dxf", "list")
    submit = "from dxf_celery.contrib.django import submit_task; submit_task('cmd-1', 'noop')"
    manage(empty_db, "shell", "-c", submit)
    listing = manage(empty_db, "dxf", "list", "--json")
    assert [(t["key"], t["state"]) for t in json.loads(listing)] == [("cmd-1", "pending")]
    assert re.search(r"^state\s+pending$", manage(empty_db, "dxf", "show", "cmd-1"), re.M)
    assert "pause requested for task" in manage(empty_db, "dxf", "pause", "cmd-1")
    assert _scalar(empty_db, "SELECT state FROM dxf_task WHERE task_key = 'cmd-1'") == "pausing"
    env = dict(os.environ, DJANGO_DB_NAME=empty_db, CELERY_BROKER_URL=BROKER)
    refused = subprocess.run(
        [sys.executable, "manage.py", "dxf", "cancel", "nosuch"],
        cwd=str(PROJECT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: ") and "'nosuch'" in lines[0], refused.stderr
    assert "No migrations to apply." in manage(empty_db, "dxf", "migrate")
    assert "purged 0 finished tasks" in manage(empty_db, "dxf", "purge", "--older-than", "30")


def test_example_project_tests_pass_under_pytest_django(empty_db: str) -> None:
    """The pytest-django recipe of docs/django.md: ``pytest`` in the project runs the same suite and the recipe."""
    pytest.importorskip("pytest_django", reason="pytest-django is not installed (pip install pytest-django)")
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_DB_NAME": empty_db,
            "CELERY_BROKER_URL": BROKER,
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT), env.get("PYTHONPATH", "")) if p),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=str(PROJECT),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "11 passed" in out, out[-3000:]


SQLITE_SETTINGS = """
from dxf_celery.contrib.django import database_url
SECRET_KEY = "x"
USE_TZ = True
INSTALLED_APPS = ["dxf_celery.contrib.django.DXFConfig", "sqproj"]
# IMMEDIATE: a transaction that reads, then writes, must not fail on a lock upgrade.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": %(name)r,
                         "OPTIONS": {"transaction_mode": "IMMEDIATE"}%(test)s}}
CELERY_DXF_DATABASE_URL = database_url("default", DATABASES)
DXF_CELERY_APP = "sqproj.capp:app"
"""
SQLITE_TESTS = """
from django.test import TestCase, TransactionTestCase
from django.db import transaction
from dxf_celery.contrib.django import get_dxf, submit_task
from dxf_celery.contrib.django.models import Task
from dxf_celery.contrib.django.testing import local_cluster

class Rollback(TestCase):
    def test_rollback(self):
        try:
            with transaction.atomic():
                submit_task("sq-rb", "noop")
                raise RuntimeError
        except RuntimeError:
            pass
        assert not Task.objects.filter(task_key="sq-rb").exists()

class Runs(TransactionTestCase):
    def test_runs(self):
        assert get_dxf().settings.database_url.endswith("test.sqlite3")
        with local_cluster() as cluster:
            with transaction.atomic():
                task = submit_task("sq-run", "noop")
            assert cluster.wait_task(task.id, timeout=60).state.value == "succeed"
"""


def _sqlite_project(root: Path, test_name: str | None) -> None:
    pkg = root / "sqproj"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    test = f', "TEST": {{"NAME": {test_name!r}}}' if test_name else ""
    (pkg / "settings.py").write_text(SQLITE_SETTINGS % {"name": str(root / "db.sqlite3"), "test": test})
    (pkg / "capp.py").write_text(
        "from celery import Celery\nfrom dxf_celery import DXF\n"
        "app = Celery('sq', broker='memory://')\n"
        "app.config_from_object('django.conf:settings', namespace='CELERY')\nDXF(app)\n"
    )
    (pkg / "dxf_tasks.py").write_text("from dxf_celery.examples import noop  # registers 'noop'\n")
    (pkg / "tests.py").write_text(SQLITE_TESTS)


def _django_test(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="sqproj.settings", PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, "-m", "django", "test", "sqproj", "--noinput"],
        cwd=str(root),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sqlite_project_follows_a_file_test_database(tmp_path: Path) -> None:
    _sqlite_project(tmp_path, str(tmp_path / "test.sqlite3"))
    proc = _django_test(tmp_path)
    assert proc.returncode == 0 and "Ran 2 tests" in proc.stderr, proc.stderr[-4000:]
    # Nothing reached the configured database: it has no DXF tables at all.
    if (tmp_path / "db.sqlite3").exists():
        engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
        assert not set(inspect(engine).get_table_names()) & DXF_TABLES
        engine.dispose()


def test_sqlite_memory_test_database_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    _sqlite_project(tmp_path, None)  # Django's default: an in-memory test database workers cannot share
    proc = _django_test(tmp_path)
    assert proc.returncode != 0
    assert "set DATABASES['default']['TEST']['NAME'] to a file" in proc.stderr, proc.stderr[-4000:]
