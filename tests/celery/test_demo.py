"""`python -m dxf_celery.demo` as a user runs it: real worker and beat processes, then nothing left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from helpers.db import SELECTED, make_db_url

pytestmark = [pytest.mark.celery, pytest.mark.slow]

REDIS_URL = os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/4")


def processes_with_env(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker`` (the demo's unique work folder)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def run_demo(workdir: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "dxf_celery.demo", "--rows", "6000", "--chunk-rows", "500", "--dir", str(workdir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXF_DEMO_")}
    return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=timeout, env=env)


def check_summary(res: subprocess.CompletedProcess[str], workdir: Path) -> None:
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "summary" in out
    assert re.search(r"rows\s+6,000 in table 'demo_orders' \(CSV: 6,000\)", out), out
    m = re.search(r"checksum\s+([0-9a-f]{16}) \(CSV: ([0-9a-f]{16})\) -> ok", out)
    assert m and m.group(1) == m.group(2), out
    nodes = re.findall(r"^\s+(demo\d@\S+)\s+ran (\d+) import, (\d+) verify subtasks", out, re.M)
    assert {n[0].split("@")[0] for n in nodes} <= {"demo1", "demo2"} and nodes, out
    assert sum(int(n[1]) for n in nodes) >= 10  # every chunk imported once, spread over the nodes
    assert "import [" in out and "verify [" in out  # progress bars were drawn
    assert "none left running" in out
    assert processes_with_env(f"DXF_DEMO_DIR={workdir}") == []


def test_demo_on_the_embedded_default(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    res = run_demo(workdir, "--keep")
    check_summary(res, workdir)
    assert "filesystem://" in res.stdout and "sqlite:///" in res.stdout
    assert (workdir / "dxf.db").exists() and (workdir / "broker" / "control").is_dir()


@pytest.mark.skipif("postgresql" not in SELECTED, reason="PostgreSQL not selected")
def test_demo_on_redis_and_postgresql(tmp_path: Path) -> None:
    db = make_db_url("postgresql", tmp_path)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        workdir = tmp_path / "demo"
        res = run_demo(workdir, "--broker", REDIS_URL, "--database", db, "--pool", "threads")
        check_summary(res, workdir)
        assert REDIS_URL in res.stdout and "postgresql+psycopg://" in res.stdout
        assert not workdir.exists() or not any(workdir.glob("*.db"))
    finally:
        client.flushdb()
        client.close()


def test_interrupted_demo_stops_everything(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) in the middle: the demo stops its workers and beat and exits.

    The one wait here that rests on a duration: the signal must land before the demo's import
    ends. The demo has no way to hold its own task (a hook would belong in dxf_celery/demo.py),
    so the import is made long (500 chunks) and the signal goes out the moment the task is
    submitted; the demo never gets to run it to its end.
    """
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXF_DEMO_")}
    args = [sys.executable, "-m", "dxf_celery.demo", "--rows", "100000", "--chunk-rows", "200", "--dir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("submitted task"):
                break
        assert processes_with_env(f"DXF_DEMO_DIR={workdir}"), "workers should be running now"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest and "none left running" in rest
    # The demo has waited for its children; what may linger is a zombie being reaped.
    deadline = time.monotonic() + 60
    while processes_with_env(f"DXF_DEMO_DIR={workdir}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env(f"DXF_DEMO_DIR={workdir}") == []


def test_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    res = run_demo(workdir, "--broker", "redis://127.0.0.1:1/0", timeout=120)
    assert res.returncode == 1
    assert "error: cannot reach the broker" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert processes_with_env(f"DXF_DEMO_DIR={workdir}") == []
