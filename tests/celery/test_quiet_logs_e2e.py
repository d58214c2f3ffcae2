"""Quiet logs: a real beat and worker at ``-l info`` log no line per scheduler tick.

Beat sends ``dxf-scheduler`` every ``dxf_scheduler_interval`` (0.2 s in these tests);
without DXF's filter each send is an info line. The debug run at the end is the positive
control: the very same lines are there, at debug.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.celery_apps.brokers import fresh_broker
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.celery_apps.harness import CeleryProcesses
from helpers.db import make_db_url
from helpers.waiting import wait_until

from dxf_celery.proto import TaskState

pytestmark = [pytest.mark.celery, pytest.mark.slow]


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    yield from make_e2e(tmp_path, fresh_broker("redis"), make_db_url("postgresql", tmp_path))


def test_beat_and_workers_at_info_log_no_per_tick_lines(e2e: E2E, tmp_path: Path) -> None:
    procs: CeleryProcesses = e2e.procs
    procs.start_worker("w1@quiet", slots=2)
    beat = procs._spawn("beat-info", ["beat", "-s", str(tmp_path / "beat-schedule"), "-l", "info"])
    task = e2e.dxf.submit_task("quiet", "e2e", meta=e2e.meta(steps=2, subtasks=2, sleep=0.1))
    assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    # Watch 20 s of ticks: at dxf_scheduler_interval 0.2 s (FAST_SETTINGS) that is about 100 of them.
    ticks_expected = 20.0 / float(e2e.app.conf.dxf_scheduler_interval)
    assert ticks_expected >= 50
    started = time.monotonic()
    while time.monotonic() - started < 20.0:
        assert beat.alive(), beat.log_text()
        time.sleep(0.5)
    beat_log = beat.log_text()
    worker_log = procs.procs["w1@quiet"].log_text()
    assert "beat: Starting..." in beat_log
    assert "dxf-scheduler" not in beat_log, beat_log[-2000:]
    ticks_in_worker = [
        line
        for line in worker_log.splitlines()
        if "dxf.schedule[" in line or "dxf-scheduler" in line or "scheduler pass" in line
    ]
    assert ticks_in_worker == [], ticks_in_worker[:5]
    # One info line per real event: the two steps planned, the task moved to history.
    assert worker_log.count("planned with 2 subtasks") == 2
    # Positive control: at debug the very same lines are there, once per tick.
    procs.stop("beat-info")
    debug = procs._spawn("beat-debug", ["beat", "-s", str(tmp_path / "beat-debug-schedule"), "-l", "debug"])
    wait_until(
        lambda: debug.log_text().count("Sending due task dxf-scheduler") >= 5, 60, 0.2, "tick lines at debug level"
    )
    assert "DEBUG/MainProcess] Scheduler: Sending due task dxf-scheduler" in debug.log_text()
