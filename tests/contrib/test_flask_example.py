"""The Flask example (examples/flask_app) runs its own tests with pytest against PostgreSQL, in a subprocess.

Its suite covers: a rolled-back order leaves no task, a committed one runs (in-process
LocalCluster and a real ``celery worker``), an unknown key is a 404 that says so, a taken key
is a 409 that rolls the order back, and the ``flask dxf`` commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers.db import PG_ADMIN_URL, throwaway_postgres_database
from helpers.paths import REPO_ROOT

pytest.importorskip("flask")

PROJECT = REPO_ROOT / "examples" / "flask_app"
BROKER = os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")


@pytest.fixture
def empty_db() -> Iterator[str]:
    with throwaway_postgres_database("flex") as name:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def test_flask_example_tests_pass(empty_db: str) -> None:
    env = dict(os.environ, SHOP_TEST_DATABASE_URL=empty_db, CELERY_BROKER_URL=BROKER)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=str(PROJECT),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "5 passed" in out, out[-3000:]
    for name in (
        "test_rollback_leaves_neither_order_nor_task",
        "test_committed_order_runs_on_a_real_worker",
        "test_flask_dxf_commands",
    ):
        assert f"{name} PASSED" in out, name
