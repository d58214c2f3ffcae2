"""End-to-end: real workers, beat and dashboard processes; the dashboard driven in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``; no browser is downloaded). Run alone with ``pytest -m browser``.
Screenshots are written to the test's tmp dir; set ``DXF_DASHBOARD_SCREENSHOT`` to a path
to also copy the tasks page there (that is how docs/img/dashboard.png is made).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import chromium, free_port
from helpers.celery_apps.brokers import fresh_broker
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.db import make_db_url
from helpers.paths import REPO_ROOT
from helpers.waiting import wait_until
from prometheus_client.parser import text_string_to_metric_families

from dxf_celery.proto import SubtaskState, TaskState

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.browser]

ROOT = REPO_ROOT


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    yield from make_e2e(tmp_path, fresh_broker("redis"), make_db_url("postgresql", tmp_path))


class DashboardProcess:
    """``python -m dxf_celery.dashboard`` in its own session; the port is read from its first line."""

    def __init__(self, tmp: Path, db_url: str, *args: str) -> None:
        self.log = tmp / "dashboard.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "dxf_celery.dashboard", "--database-url", db_url, "--port", "0", *args],
                cwd=str(ROOT),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def port() -> int | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"dashboard exited:\n{self.log.read_text()}")
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", self.log.read_text())
            return int(found.group(1)) if found else None

        self.port: int = wait_until(port, 60, what="the dashboard to listen")
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path) as driver:
        yield driver


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _finished_in_bars(driver: Any, key: str) -> int:
    """Sum of the finished counts the tasks page shows in the row of ``key`` (0 before planning)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        bars = driver.find_elements(By.CSS_SELECTOR, f'tr.task[data-key="{key}"] .bar')
        return sum(int(b.get_attribute("data-finished")) for b in bars)
    except StaleElementReferenceException:  # the page redrew between the two calls: read again
        return -1


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_dashboard_follows_a_two_step_task_and_steers_it(e2e: E2E, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ports = {"w1@dash": free_port(), "w2@dash": free_port()}
    for name, port in ports.items():
        e2e.procs.start_worker(name, concurrency=3, slots=2, extra_env={"DXF_E2E_METRICS_PORT": str(port)})
    e2e.procs.start_beat()
    db_url = e2e.dxf.settings.database_url
    dash = DashboardProcess(tmp_path, db_url, "--enable-actions", "--node-ttl", "3")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        key = "dash-two-step"
        task = e2e.dxf.submit_task(key, "e2e", meta=e2e.meta(steps=2, subtasks=16, sleep=1.0))

        # Tasks page: the task is there, and its progress moves between two reads.
        browser.get(dash.url + "/")
        wait_until(lambda: _finished_in_bars(browser, key) >= 1, 120, 0.2, "a finished subtask on the tasks page")
        first = _finished_in_bars(browser, key)
        wait_until(lambda: _finished_in_bars(browser, key) > first, 120, 0.2, "the progress bar to advance")
        assert "of" in _text(browser, f'tr.task[data-key="{key}"] td.step')
        browser.save_screenshot(str(shots / "tasks.png"))

        # Nodes page: both workers with their slots.
        browser.get(dash.url + "/nodes")

        def node_slots() -> dict[str, str]:
            return {n: _text(browser, f'tr.node[data-node="{n}"] td.slots') for n in ports}

        wait_until(
            lambda: all(re.fullmatch(r"[0-2]/2", v) for v in node_slots().values()),
            60,
            0.2,
            "both nodes with their slots",
        )
        wait_until(
            lambda: any(_text(browser, f'tr.node[data-node="{n}"] td.lease') for n in ports),
            60,
            0.2,
            "the lease holder",
        )
        browser.save_screenshot(str(shots / "nodes.png"))

        # Task page: subtasks per node, for both nodes.
        browser.get(f"{dash.url}/tasks/{key}")

        def nodes_on_task_page() -> set[str]:
            rows = browser.find_elements(By.CSS_SELECTOR, "#subtasks-per-node tr.step-node")
            try:
                return {r.get_attribute("data-node") for r in rows}
            except Exception:
                return set()

        wait_until(lambda: nodes_on_task_page() >= set(ports), 60, 0.2, "subtasks of both nodes on the task page")
        browser.save_screenshot(str(shots / "task.png"))

        # Pause and resume through the page's buttons.
        wait_until(
            lambda: browser.find_elements(By.CSS_SELECTOR, 'button[data-action="pause"]'), 30, 0.2, "the pause button"
        )
        assert e2e.dxf.get_task(task.id).state == TaskState.RUNNING, "the task ended before the pause"
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="pause"]').click()
        wait_until(lambda: e2e.dxf.get_task(task.id).state == TaskState.PAUSED, 60, 0.1, "the task to pause")
        wait_until(lambda: "paused" in _text(browser, "h1 .state"), 30, 0.2, "the page to show paused")
        paused = e2e.dxf.get_subtasks(task.id)
        assert any(s.state == SubtaskState.PAUSED for s in paused) or all(
            s.state != SubtaskState.RUNNING for s in paused
        )
        browser.save_screenshot(str(shots / "paused.png"))
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="resume"]').click()
        wait_until(lambda: e2e.dxf.get_task(task.id).state != TaskState.PAUSED, 60, 0.1, "the task to resume")
        done = e2e.dxf.wait_task(task.id, timeout=180)
        assert done.state == TaskState.SUCCEED

        browser.get(dash.url + "/")
        wait_until(
            lambda: "succeed" in _text(browser, f'tr.task[data-key="{key}"] .state'),
            60,
            0.2,
            "the finished task on the tasks page",
        )
        browser.save_screenshot(str(shots / "finished.png"))
        target = os.environ.get("DXF_DASHBOARD_SCREENSHOT")
        if target:
            shutil.copyfile(shots / "tasks.png", target)

        # /metrics of the dashboard matches SQL for the finished task.
        status, text = dash.get("/metrics")
        assert status == 200
        samples = _metrics(text)
        subtasks = e2e.dxf.get_subtasks(task.id)
        succeeded = sum(s.state == SubtaskState.SUCCEED for s in subtasks)
        assert succeeded == 32
        assert samples[("dxf_subtasks_finished_total", (("state", "succeed"), ("type", "e2e")))] == succeeded
        assert samples[("dxf_tasks", (("state", "succeed"), ("type", "e2e")))] == 1
        for node in ports:
            assert samples[("dxf_node_slots", (("node", node), ("role", "")))] == 2

        # The workers' own endpoints: scheduler passes were timed by whoever held the lease.
        passes = 0.0
        for port in ports.values():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics")
            worker = _metrics(conn.getresponse().read().decode())
            conn.close()
            passes += sum(v for (name, _), v in worker.items() if name == "dxf_scheduler_pass_seconds_count")
            assert ("dxf_sql_retries_total", ()) in worker
        assert passes > 0
    finally:
        dash.close()
