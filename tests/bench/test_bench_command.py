"""``python -m bench --quick``, the documented smoke run: it finishes and its JSON holds every row.

Real workers on the real Redis (``DXF_TEST_REDIS_URL``, flushed) and throwaway databases on
the local PostgreSQL and MariaDB; no figure is judged (no timing assert), only that each row
was measured and the ratios exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.celery_apps.brokers import REDIS_URL
from helpers.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.celery]

#: Every row of docs/performance.md's table, as the JSON names it.
ROWS = {
    "noop": ("postgresql", "mariadb", "sqlite"),
    "noop.postgresql": ("raw_celery_median", "dxf_median", "ratio_median", "celery_insert_median", "ratio_vs_insert"),
    "csv_import": ("dxf_median_s", "chord_median_s", "speedup_vs_chord"),
    "latency": ("p50_ms", "p95_ms"),
    "small_tasks": ("tasks_per_s", "submit_per_s"),
    "pool_time": ("share",),
    "pool_time_one_at_a_time": ("share",),
    "pool_time_long": ("share",),
}


def _at(results: dict[str, object], path: str) -> dict[str, object]:
    node: object = results
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"{path}: no {part!r} in the results"
        node = node[part]
    assert isinstance(node, dict)
    return node


@pytest.mark.timeout(1200)
def test_quick_bench_writes_every_row(tmp_path: Path) -> None:
    env = dict(os.environ, DXF_BENCH_BROKER=REDIS_URL)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (written,) = tmp_path.glob("*-quick.json")
    results = json.loads(written.read_text())
    for path, keys in ROWS.items():
        node = _at(results, path)
        assert set(keys) <= set(node), f"{path}: missing {set(keys) - set(node)}"
    assert set(results["throughput_ratio_vs_celery"]) == {"postgresql", "mariadb", "sqlite"}
    assert len(results["big_task"]) == 2
    assert all({"per_s", "pass_p50_ms", "leader_rss_mb"} <= set(b) for b in results["big_task"])
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        assert results["procrastinate_installed"] is False
        assert "skipped: procrastinate not installed" in done.stdout
    else:
        assert "procrastinate_median" in results["noop"]["postgresql"]
    assert "| measure | DXF | baseline | ratio | goal |" in done.stdout


def test_only_refuses_an_unknown_row() -> None:
    # As a user runs it: ``tests/bench`` would shadow the repo's ``bench`` package in-process.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "latency,bogus"],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown rows bogus" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(600)
def test_only_runs_just_the_rows_asked_for(tmp_path: Path) -> None:
    env = dict(os.environ, DXF_BENCH_BROKER=REDIS_URL)
    only = ["--only", "small_tasks,latency", "--databases", "postgresql"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *only, "--results-dir", str(tmp_path)],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (written,) = tmp_path.glob("*-quick-only-latency+small_tasks.json")
    results = json.loads(written.read_text())
    assert {"tasks_per_s", "submit_per_s", "done"} <= set(results["small_tasks"])
    assert results["small_tasks"]["done"] == results["small_tasks"]["tasks"]  # the one-query poll sees them all
    assert {"p50_ms", "p95_ms"} <= set(results["latency"])
    assert results["noop"] == {} and "big_task" not in results and "pool_time" not in results
    assert "csv_import" not in results and "throughput_ratio_vs_celery" not in results
