"""End-to-end: what Flower shows of DXF executors, with real workers (``-E``), beat, a Redis result backend and Flower.

The test starts Flower itself (127.0.0.1, a free port, ``--broker`` = the test's Redis,
``--persistent=False``) and reads its ``/api/tasks`` while DXF tasks run: a running
executor shows its progress figures, a two-step task's executors end ``SUCCESS`` with the
DXF outcome, and a paused task's executors end ``PAUSED`` with theirs, never as a plain
success. Finally it takes a screenshot of Flower's tasks page in headless Chromium; set
``DXF_FLOWER_SCREENSHOT`` to a path to copy it there (that is how docs/img/flower.png is made).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from helpers.browser import chromium, free_port
from helpers.celery_apps.brokers import fresh_broker
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.celery_apps.types import release
from helpers.db import make_db_url
from helpers.waiting import wait_until
from prometheus_client.parser import text_string_to_metric_families

from dxf_celery.proto import TaskState
from dxf_celery.worker.outcome import celery_state

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.browser]

WORKERS = ("w1@flower", "w2@flower")
#: Celery states of an executor that has not ended yet (as Flower shows them).
NOT_ENDED = frozenset({"PENDING", "RECEIVED", "STARTED", "PROGRESS"})


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    yield from make_e2e(tmp_path, fresh_broker("redis"), make_db_url("postgresql", tmp_path))


class Flower:
    """Flower's HTTP API, as a script would use it."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read().decode()
        return json.loads(body) if path.startswith("/api/") else body

    def executors(self, task_id: int) -> dict[str, dict[str, Any]]:
        """The executor rows of DXF task ``task_id`` in ``/api/tasks``, by Celery task id."""
        rows: dict[str, dict[str, Any]] = self.get("/api/tasks")
        prefix = f"dxf.execute[task={task_id} "
        return {uuid: row for uuid, row in rows.items() if str(row.get("name") or "").startswith(prefix)}

    def workers_online(self) -> set[str]:
        """Workers whose events Flower has heard (its Prometheus gauge, fed by worker events)."""
        online = set()
        for family in text_string_to_metric_families(self.get("/metrics")):
            for sample in family.samples:
                if sample.name == "flower_worker_online" and sample.value == 1:
                    online.add(sample.labels["worker"])
        return online


def figures(row: dict[str, Any]) -> dict[str, Any]:
    """The DXF figures in a row's ``result`` (Flower shows results as text, Celery's repr)."""
    text = row.get("result")
    if not isinstance(text, str) or not text.startswith("{"):
        return {}
    value = ast.literal_eval(text)
    return value if isinstance(value, dict) else {}


def test_flower_rows_tell_the_truth(e2e: E2E, tmp_path: Path) -> None:
    broker = e2e.app.conf.broker_url
    backend_url = broker  # the test's Redis holds results too (flushed with it)
    conf = json.dumps({"result_backend": backend_url})
    for name in WORKERS:
        e2e.procs.start_worker(name, concurrency=3, slots=2, extra_args=("-E",), extra_env={"DXF_E2E_CONF": conf})
    port = free_port()
    # The tasks page shows args and results too (Flower's default columns leave them out).
    columns = "--tasks_columns=name,state,args,result,received,runtime,worker"
    e2e.procs.start_flower(broker=broker, port=port, result_backend=backend_url, extra_args=(columns,))
    flower = Flower(port)
    # Flower hears both workers' events before any executor is sent, so it sees every row whole.
    wait_until(lambda: flower.workers_online() >= set(WORKERS), 60, 0.2, "flower to hear both workers")
    e2e.procs.start_beat()
    results = Celery("results", broker=broker, backend=backend_url, set_as_current=False)

    # ---- a running executor shows its progress figures (read while the subtasks are held)
    hold = e2e.hold("two")
    two = e2e.dxf.submit_task("flower-two", "e2e", meta=e2e.meta(steps=2, subtasks=4, hold=hold))

    def progressing() -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        for uuid, row in flower.executors(two.id).items():
            if row["state"] == "PROGRESS" and figures(row).get("subtasks_running"):
                return uuid, row, figures(row)
        return None

    uuid, row, shown = wait_until(progressing, 90, 0.2, "a PROGRESS row with figures in Flower")
    assert e2e.dxf.get_task(two.id).state == TaskState.RUNNING  # held: it was read while it ran
    assert row["name"] == f"dxf.execute[task={two.id} key=flower-two type=e2e]"  # no step frozen in it
    assert row["args"] == f"(task={two.id}, key='flower-two', type='e2e')"
    assert (shown["task"], shown["key"], shown["state"]) == (two.id, "flower-two", "running")
    assert (shown["step"], shown["step_index"], shown["step_count"]) == (1, 1, 1)
    assert shown["subtasks_total"] == 4 and shown["subtasks_done"] == 0 and shown["node"] in WORKERS
    # update_state: the result backend holds the same figures, and Flower reads that state too.
    stored = wait_until(
        lambda: AsyncResult(uuid, app=results).state == "PROGRESS" and AsyncResult(uuid, app=results).info,
        60,
        0.2,
        "the PROGRESS state in the result backend",
    )
    assert stored["task"] == two.id and stored["subtasks_total"] == 4
    assert flower.get(f"/api/task/result/{uuid}")["state"] == "PROGRESS"

    release(hold)
    assert e2e.dxf.wait_task(two.id, timeout=120).state == TaskState.SUCCEED

    def ended(task_id: int) -> dict[str, dict[str, Any]] | None:
        rows = flower.executors(task_id)
        return rows if rows and all(r["state"] not in NOT_ENDED for r in rows.values()) else None

    rows = wait_until(lambda: ended(two.id), 60, 0.2, "every executor of the two-step task to end in Flower")
    outcomes = [figures(r) for r in rows.values()]
    assert all(r["state"] == celery_state(figures(r)["ended"]) for r in rows.values()), rows
    # Done with its work (finished, or idle when the task went on elsewhere), or its held
    # subtask was given to the other node by the balancer: never stopped otherwise.
    assert {o["ended"] for o in outcomes} <= {"finished", "idle", "moved"}, outcomes
    assert any(r["state"] == "SUCCESS" for r in rows.values())
    # Flower's rows account for every subtask of both steps, each run once.
    assert sum(o["subtasks"] for o in outcomes) == 8
    assert {step for o in outcomes for step in o["steps"]} == {1, 2}
    assert all("step" not in o for o in outcomes)

    # ---- a paused task: its executors end PAUSED with the DXF outcome, never a plain success
    hold_p = e2e.hold("paused")
    paused = e2e.dxf.submit_task("flower-paused", "e2e", meta=e2e.meta(steps=2, subtasks=4, hold=hold_p))
    wait_until(lambda: e2e.running_subtasks(paused.id), 90, 0.1, "subtasks of the task to be paused running")
    assert e2e.dxf.pause_task(paused.id)
    wait_until(lambda: e2e.dxf.get_task(paused.id).state == TaskState.PAUSED, 90, 0.1, "the task to pause")
    rows = wait_until(lambda: ended(paused.id), 60, 0.2, "every executor of the paused task to end in Flower")
    assert all(r["state"] == celery_state(figures(r)["ended"]) for r in rows.values()), rows
    assert all(r["state"] != "SUCCESS" and r["result"] != "{'step': 1}" for r in rows.values()), rows
    stopped = {uuid: row for uuid, row in rows.items() if row["state"] == "PAUSED"}
    assert stopped, rows
    for uuid, row in stopped.items():
        outcome = figures(row)
        assert outcome["ended"] == "paused" and outcome["task"] == paused.id, outcome
        assert outcome["task_state"] in ("pausing", "paused")
        assert outcome["steps"] == [1] and outcome["subtasks"] == 0  # held: nothing finished
        assert outcome["subtask_ends"] == {"left": 1}  # the held one, left for the resume
        assert AsyncResult(uuid, app=results).state == "PAUSED"
        assert AsyncResult(uuid, app=results).info["ended"] == "paused"

    # ---- what Flower's tasks page shows: a running, a paused and finished executors
    running = e2e.dxf.submit_task("flower-running", "e2e", meta=e2e.meta(steps=1, subtasks=4, hold=e2e.hold("running")))
    wait_until(
        lambda: any(figures(r).get("subtasks_running") for r in flower.executors(running.id).values()),
        90,
        0.2,
        "the running task's progress in Flower",
    )
    shot = tmp_path / "flower-tasks.png"
    with chromium(tmp_path, window="1900,900") as browser:
        from selenium.webdriver.common.by import By

        browser.get(flower.url + "/tasks")

        def badges() -> set[str]:
            try:
                return {b.text for b in browser.find_elements(By.CSS_SELECTOR, "#tasks-table .badge")}
            except Exception:  # the table redrew under us: read again
                return set()

        wait_until(
            lambda: {"PROGRESS", "PAUSED", "SUCCESS"} <= badges(), 60, 0.2, "the three states on Flower's tasks page"
        )
        cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#tasks-table td")]
        assert any("'ended': 'paused'" in c for c in cells) and any("'subtasks_total': 4" in c for c in cells)
        browser.save_screenshot(str(shot))
    target = os.environ.get("DXF_FLOWER_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
    results.close()
