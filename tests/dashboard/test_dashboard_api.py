"""The dashboard's JSON endpoints, actions, token check and ``/metrics``, over a real server and real SQL."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.dashboard import Client, running_dashboard
from helpers.paths import REPO_ROOT
from helpers.storage import force_subtask, running_task
from prometheus_client.parser import text_string_to_metric_families

from dxf_celery.cli.dashboard import dashboard
from dxf_celery.dashboard.command import main
from dxf_celery.dashboard.server import check_bind, is_loopback
from dxf_celery.proto import SubtaskState, TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.worker.quiet_logs import BEAT_LOGGER, TickToDebug
from dxf_celery.worker.quiet_logs import install as install_quiet_logs


def _two_node_task(tm: TaskManager, key: str = "big") -> int:
    """Step 1 over n1/n2: two succeeded (with summaries), one failed with an error, one running."""
    tm.init_meta("n1", "", 4)
    tm.init_meta("n2", "io", 2)
    task = running_task(tm, key, exec_ids=["n1", "n2"], n=4, concurrency=2)
    subs = tm.get_subtasks(task.id)
    for s in subs[:2]:
        tm.start_subtask(s.id, s.exec_id)
        tm.update_subtask_summary(s.id, {"row_count": 10, "bytes": 1000})
        tm.finish_subtask(s.exec_id, s.id, b"done")
    tm.start_subtask(subs[2].id, subs[2].exec_id)
    tm.update_subtask_state_and_error(subs[2].exec_id, subs[2].id, SubtaskState.FAILED, ValueError("bad row 7"))
    tm.start_subtask(subs[3].id, subs[3].exec_id)
    return task.id


def test_tasks_and_task_page_show_steps_nodes_rates_and_errors(task_manager: TaskManager) -> None:
    task_id = _two_node_task(task_manager)
    with running_dashboard(task_manager) as client:
        listing = client.get("/api/tasks")
        assert listing.status == 200 and listing.headers["content-type"].startswith("application/json")
        (task,) = listing.json()["tasks"]
        assert (task["key"], task["state"], task["step"], task["step_index"], task["step_count"]) == (
            "big",
            "running",
            1,
            1,
            1,
        )
        (step,) = task["steps"]
        assert (step["total"], step["finished"], step["succeed"]) == (4, 3, 2)
        assert step["counts"] == {"failed": 1, "running": 1, "succeed": 2}
        assert (step["row_count"], step["bytes"]) == (20, 2000)
        assert task["rows_per_second"] is not None and task["rows_per_second"] > 0
        assert task["eta_seconds"] is not None and task["elapsed_seconds"] is not None
        assert task["allowed_actions"] == ["pause", "cancel", "modify"]

        detail = client.get("/api/tasks/big").json()
        assert detail["id"] == task_id and detail["source"] == "live"
        assert client.get(f"/api/tasks/{task_id}").json()["key"] == "big"  # by id too
        nodes = {n["node"]: n["counts"] for n in detail["steps"][0]["nodes"]}
        assert nodes == {"n1": {"failed": 1, "succeed": 1}, "n2": {"running": 1, "succeed": 1}}
        (failed,) = detail["failed"]
        assert (failed["state"], failed["error"], failed["node"]) == ("failed", "bad row 7", "n1")
        assert len(detail["slowest"]) == 4
        durations = [s["duration_seconds"] for s in detail["slowest"]]
        assert durations == sorted(durations, reverse=True)
        events = [e["event"] for e in detail["timeline"]]
        assert events[0] == "submitted" and "step 1 planned: 4 subtasks" in events
        assert "step 1: first subtask started" in events


def test_finished_task_is_read_from_history(task_manager: TaskManager) -> None:
    task = running_task(task_manager, "old", exec_ids=["n1"], n=2)
    for s in task_manager.get_subtasks(task.id):
        force_subtask(
            task_manager,
            s.id,
            state=SubtaskState.SUCCEED,
            summary='{"row_count": 5}',
            start_time=task.create_time,
            end_time=task.create_time,
        )
    assert task_manager.succeed(task.id)
    assert task_manager.transfer_tasks_to_history([task_manager.get_task_by_id(task.id)]) == 1
    with running_dashboard(task_manager) as client:
        (listed,) = client.get("/api/tasks").json()["tasks"]
        assert (listed["key"], listed["state"], listed["done"], listed["eta_seconds"]) == ("old", "succeed", True, None)
        assert listed["steps"][0]["progress"] == 1.0 and listed["steps"][0]["row_count"] == 10
        assert listed["allowed_actions"] == []
        detail = client.get("/api/tasks/old").json()
        assert detail["source"] == "history"
        assert detail["timeline"][-1]["event"] == "ended succeed (moved to history)"


def test_unknown_task_is_404_with_a_clear_message(task_manager: TaskManager) -> None:
    with running_dashboard(task_manager) as client:
        missing = client.get("/api/tasks/no-such-key")
        assert missing.status == 404
        assert missing.json()["error"] == "no task with key or id 'no-such-key', live or in history"
        assert client.get("/api/nope").status == 404
        assert client.get("/api/tasks?state=bogus").status == 400
        assert client.get("/api/tasks?limit=x").status == 400


def test_actions_are_refused_when_disabled(task_manager: TaskManager) -> None:
    running_task(task_manager, "k")
    with running_dashboard(task_manager) as client:
        assert client.get("/api/config").json()["actions"] is False
        for action in ("pause", "cancel", "resume", "modify"):
            refused = client.post(f"/api/tasks/k/{action}", {})
            assert refused.status == 403, action
            assert "--enable-actions" in refused.json()["error"]
    assert task_manager.get_task_by_key("k").state == TaskState.RUNNING


def test_actions_go_through_the_client_api_when_enabled(task_manager: TaskManager) -> None:
    task_manager.init_meta("n1", "", 4)
    running_task(task_manager, "k", concurrency=1)
    woken: list[str] = []
    with running_dashboard(task_manager, actions=True, wake=woken.append) as client:
        assert client.get("/api/config").json()["actions"] is True
        # Without the header a cross-site form could post: refused.
        assert client.post("/api/tasks/k/pause", header=False).status == 403
        assert client.post("/api/tasks/k/resume").status == 409  # running, not paused
        paused = client.post("/api/tasks/k/pause")
        assert paused.status == 200 and paused.json()["ok"] is True
        assert task_manager.get_task_by_key("k").state == TaskState.PAUSING
        assert woken == ["pause"]
        assert client.post("/api/tasks/missing/pause").status == 404

    other = running_task(task_manager, "m", concurrency=1)
    with running_dashboard(task_manager, actions=True) as client:
        assert client.post("/api/tasks/m/modify", {"concurrency": 0}).status == 400
        assert client.post("/api/tasks/m/modify", {"color": 1}).status == 400
        assert client.post("/api/tasks/m/modify", {"concurrency": 2}).status == 200
        assert task_manager.get_task_by_id(other.id).state == TaskState.MODIFYING
        assert client.post("/api/tasks/m/cancel").status == 409  # modifying: not cancellable


def test_token_is_required_when_set(task_manager: TaskManager) -> None:
    running_task(task_manager, "k")
    with running_dashboard(task_manager, token="s3cret") as client:
        anonymous = Client(client.port)
        denied = anonymous.get("/api/tasks")
        assert denied.status == 401 and "basic" in denied.headers["www-authenticate"].lower()
        assert anonymous.get("/metrics").status == 401
        assert Client(client.port, "wrong").get("/api/tasks").status == 401
        assert client.get("/api/tasks").status == 200
        assert client.get("/api/tasks", auth="basic").status == 200
        first = anonymous.get("/?token=s3cret")
        assert first.status == 200 and "dxf_dashboard_token=s3cret" in first.headers["set-cookie"]
        cookie = anonymous.get("/api/tasks", headers={"Cookie": "dxf_dashboard_token=s3cret"})
        assert cookie.status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.org"])
def test_binding_beyond_loopback_without_a_token_is_refused(host: str) -> None:
    assert not is_loopback(host)
    result = CliRunner().invoke(main, ["--database-url", "sqlite://", "--host", host])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: refusing to listen on {host} without --token")
    group = CliRunner().invoke(dashboard, ["--host", host], obj=object())
    assert group.exit_code == 1 and len(group.output.strip().splitlines()) == 1
    check_bind(host, "a-token")  # with a token it may listen
    for local in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(local, None)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_parse_and_match_sql(task_manager: TaskManager) -> None:
    task_id = _two_node_task(task_manager)
    assert task_manager.try_acquire_lease("scheduler", "n1", 60)
    with running_dashboard(task_manager) as client:
        response = client.get("/metrics")
        assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.body.decode())
    subs = task_manager.get_subtasks(task_id)
    by_state: dict[str, int] = {}
    for s in subs:
        by_state[s.state.value] = by_state.get(s.state.value, 0) + 1
    assert samples[("dxf_sql_up", ())] == 1
    assert samples[("dxf_tasks", (("state", "running"), ("type", "t")))] == 1
    for state, n in by_state.items():
        assert samples[("dxf_subtasks", (("state", state), ("type", "t")))] == n
    assert samples[("dxf_subtasks_finished_total", (("state", "succeed"), ("type", "t")))] == by_state["succeed"]
    assert samples[("dxf_subtasks_finished_total", (("state", "failed"), ("type", "t")))] == by_state["failed"]
    assert samples[("dxf_subtask_rows_total", (("type", "t"),))] == sum(
        int(summary.get("row_count", 0)) for summary in task_manager.get_subtask_summaries(task_id, 1)
    )
    assert samples[("dxf_subtask_bytes_total", (("type", "t"),))] == 2000
    used = task_manager.get_used_slots_on_nodes()
    for node in task_manager.get_all_nodes():
        assert samples[("dxf_node_slots", (("node", node.id), ("role", node.role)))] == node.cpu_count
        assert samples[("dxf_node_slots_used", (("node", node.id),))] == used.get(node.id, 0)
    assert samples[("dxf_node_executors", (("node", "n2"),))] == 1  # its running subtask
    assert samples[("dxf_node_executors", (("node", "n1"),))] == 0
    assert samples[("dxf_lease_holder", (("lease", "scheduler"), ("owner", "n1")))] == 1


def test_nodes_view_shows_slots_executors_heartbeat_and_lease(task_manager: TaskManager) -> None:
    _two_node_task(task_manager)
    assert task_manager.try_acquire_lease("scheduler", "n2", 60)
    with running_dashboard(task_manager, node_ttl=3600.0) as client:
        data = client.get("/api/nodes").json()
    assert data["scheduler_lease_holder"] == "n2"
    nodes = {n["id"]: n for n in data["nodes"]}
    assert (nodes["n1"]["slots"], nodes["n1"]["role"], nodes["n2"]["role"]) == (4, "", "io")
    assert (nodes["n2"]["slots_used"], nodes["n2"]["executors"], nodes["n2"]["lease_holder"]) == (2, 1, True)
    assert (nodes["n1"]["slots_used"], nodes["n1"]["executors"], nodes["n1"]["lease_holder"]) == (0, 0, False)
    assert all(n["alive"] is True and n["heartbeat_age_seconds"] >= 0 for n in nodes.values())


def test_pages_and_static_files_are_served(task_manager: TaskManager) -> None:
    with running_dashboard(task_manager) as client:
        for path in ("/", "/nodes", "/tasks/anything"):
            page = client.get(path)
            assert page.status == 200 and b'src="/static/app.js"' in page.body
        script = client.get("/static/app.js")
        assert script.status == 200 and b"/api/tasks" in script.body
        assert client.get("/static/style.css").status == 200


def test_beat_tick_line_is_demoted_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    installed = install_quiet_logs("dxf-scheduler")
    assert install_quiet_logs("dxf-scheduler") is installed  # once per process
    beat = logging.getLogger(BEAT_LOGGER)
    assert sum(isinstance(f, TickToDebug) for f in beat.filters) == 1
    caplog.set_level(logging.INFO, logger=BEAT_LOGGER)
    beat.info("Scheduler: Sending due task %s (%s)", "dxf-scheduler", "dxf.schedule")
    beat.info("Scheduler: Sending due task %s (%s)", "nightly-report", "app.report")
    assert [r.getMessage() for r in caplog.records] == ["Scheduler: Sending due task nightly-report (app.report)"]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=BEAT_LOGGER)
    beat.info("Scheduler: Sending due task %s (%s)", "dxf-scheduler", "dxf.schedule")
    records: list[Any] = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [("DEBUG", "Scheduler: Sending due task dxf-scheduler (dxf.schedule)")]


def test_json_documents_are_plain_json(task_manager: TaskManager) -> None:
    _two_node_task(task_manager)
    with running_dashboard(task_manager) as client:
        for path in ("/api/tasks", "/api/tasks/big", "/api/nodes", "/api/config"):
            body = client.get(path).body
            assert json.loads(body) is not None, path


def test_worker_metrics_time_passes_and_count_sql_retries(task_manager: TaskManager) -> None:
    from prometheus_client import generate_latest

    from dxf_celery.metrics import WorkerMetrics
    from dxf_celery.retry import ExponentialBackoff, run_with_retry

    metrics = WorkerMetrics(task_manager)
    try:
        calls: list[int] = []

        def flaky() -> int:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError("database restarting")
            return 7

        assert (
            run_with_retry(
                flaky,
                is_retryable=lambda e: isinstance(e, ConnectionError),
                backoff=ExponentialBackoff(base=0.001, maximum=0.001),
            )
            == 7
        )
        held = metrics.timed_pass("n1", lambda: True)
        assert held() is True
        assert metrics.timed_pass("n2", lambda: False)() is False
        samples = _samples(generate_latest(metrics.registry).decode())
    finally:
        metrics.close()
    assert samples[("dxf_sql_retries_total", ())] == 2
    assert samples[("dxf_scheduler_pass_seconds_count", (("node", "n1"),))] == 1
    assert ("dxf_scheduler_pass_seconds_count", (("node", "n2"),)) not in samples  # no lease: no pass
    assert samples[("dxf_scheduler_lease_held", (("node", "n1"),))] == 1
    assert samples[("dxf_scheduler_lease_held", (("node", "n2"),))] == 0
    assert samples[("dxf_sql_up", ())] == 1


def test_grafana_dashboard_queries_only_metrics_that_exist(task_manager: TaskManager) -> None:
    import re

    from prometheus_client import generate_latest

    from dxf_celery.metrics import WorkerMetrics

    _two_node_task(task_manager)
    assert task_manager.try_acquire_lease("scheduler", "n1", 60)
    metrics = WorkerMetrics(task_manager)
    try:
        metrics.timed_pass("n1", lambda: True)()
        metrics.retries.inc()
        exposed = {name for name, _ in _samples(generate_latest(metrics.registry).decode())}
    finally:
        metrics.close()
    doc = json.loads((REPO_ROOT / "docs" / "grafana-dxf.json").read_text())
    queried = {
        m
        for panel in doc["panels"]
        for target in panel["targets"]
        for m in re.findall(r"\bdxf_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exposed, sorted(queried - exposed)
