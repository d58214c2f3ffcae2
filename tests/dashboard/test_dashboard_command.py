"""``celery -A app dxf dashboard`` as a real process: the command attached to the real ``dxf`` group.

Until the CLI registers the command itself, the child adds it to the group the
``celery.commands`` entry point loads (``dxf_celery.cli:dxf``), exactly what the CLI's own
hook does, and then runs Celery's ``main``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT
from helpers.waiting import wait_until

from dxf_celery.proto import TaskState
from dxf_celery.storage import TaskManager, migrate

pytestmark = pytest.mark.slow

ROOT = REPO_ROOT
CHILD = (
    "import sys\n"
    "from celery.__main__ import main\n"
    "sys.argv = ['celery', '-A', 'helpers.celery_apps.dxf_app', 'dxf', 'dashboard', *sys.argv[1:]]\n"
    "main()\n"
)


def _spawn(tmp_path: Path, db_url: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = dict(
        os.environ,
        DXF_E2E_DB_URL=db_url,
        PYTHONUNBUFFERED="1",
        DXF_E2E_BROKER=os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3"),
    )
    env["PYTHONPATH"] = str(ROOT / "tests") + os.pathsep + str(ROOT)
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            cwd=str(ROOT),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return popen, log


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_celery_dxf_dashboard_serves_the_apps_database(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'dxf.db'}"
    migrate(db_url)
    tm = TaskManager(db_url)
    try:
        task_id = tm.create_task("via-celery", "e2e", 1)
        popen, log = _spawn(tmp_path, db_url, "--port", "0", "--enable-actions")
        try:

            def port() -> int | None:
                assert popen.poll() is None, log.read_text()
                found = re.search(r"DXF dashboard on http://127\.0\.0\.1:(\d+)/ \(actions on\)", log.read_text())
                return int(found.group(1)) if found else None

            bound = wait_until(port, 60, what="the dashboard to listen")
            status, listing = _request(bound, "GET", "/api/tasks")
            assert status == 200 and [t["key"] for t in listing["tasks"]] == ["via-celery"]  # type: ignore[index]
            status, _ = _request(bound, "POST", "/api/tasks/via-celery/pause", {"X-DXF-Request": "1"})
            assert status == 200
            assert tm.get_task_by_id(task_id).state == TaskState.PAUSING
        finally:
            popen.send_signal(signal.SIGTERM)
            assert popen.wait(30) == 0, log.read_text()
    finally:
        tm.dispose()


def test_celery_dxf_dashboard_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    popen, log = _spawn(tmp_path, f"sqlite:///{tmp_path / 'dxf.db'}", "--host", "0.0.0.0")
    assert popen.wait(60) == 1
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines == [
        "Error: refusing to listen on 0.0.0.0 without --token (or DXF_DASHBOARD_TOKEN): anyone who can "
        "reach it would see every task; bind 127.0.0.1 or set a token"
    ]
