"""The Celery extension object, its settings, and the executor task body run in-process.

No worker process here: these drive ``DXF``, ``DXFSettings`` and the ``dxf.execute`` body
(``run_execute``) directly, with real SQL and real threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from helpers.celery_apps.harness import read_record
from helpers.celery_apps.types import TASK_TYPE, e2e_meta, executor_factory, scheduler_factory
from helpers.waiting import wait_until

from dxf_celery import DXF, DXFConfigError, DXFSettings, TaskState
from dxf_celery.proto import SubtaskState
from dxf_celery.scheduler import register_scheduler_factory
from dxf_celery.scheduler.manager import Manager as SchedulerManager
from dxf_celery.taskexecutor import register_task_type
from dxf_celery.worker.execution import local_executions
from dxf_celery.worker.tasks import run_execute


def _app(**conf: object) -> Celery:
    app = Celery("unit", broker="memory://", set_as_current=False)
    app.conf.update(conf)
    return app


# ---------------------------------------------------------------------- settings


def test_settings_defaults_are_documented_values() -> None:
    s = DXFSettings.from_conf({})
    assert s.database_url == "sqlite:///dxf.db"
    assert (s.task_check_interval, s.subtask_check_interval, s.max_subtask_check_interval) == (0.3, 0.3, 2.0)
    assert s.scheduler_interval == 0.5 and s.node_role == "" and s.node_slots >= 1


def test_settings_read_prefixed_keys_and_coerce_strings() -> None:
    s = DXFSettings.from_conf(
        {"dxf_node_slots": "8", "CELERY_DXF_NODE_ROLE": "bg", "dxf_beat": "false", "DXF_SCHEDULER_INTERVAL": "0.25"}
    )
    assert (s.node_slots, s.node_role, s.beat, s.scheduler_interval) == (8, "bg", False, 0.25)


def test_history_retention_reaches_the_scheduler_in_seconds() -> None:
    from celery import Celery

    from dxf_celery.worker.state import DXFState

    assert DXFState(Celery("keep"), {}).scheduler_intervals().history_keep_seconds is None
    app = Celery("ret")
    app.conf.dxf_history_retention = "1.5"
    assert DXFState(app, {}).scheduler_intervals().history_keep_seconds == 1.5 * 86400


def test_planning_retry_settings_reach_the_scheduler() -> None:
    from celery import Celery

    from dxf_celery.worker.state import DXFState

    default = DXFState(Celery("plan"), {}).scheduler_intervals()
    assert (default.planning_max_retries, default.planning_retry_max_interval) == (10, 3.0)
    app = Celery("plan2")
    app.conf.dxf_planning_max_retries = "2"
    app.conf.dxf_planning_retry_max_interval = "0.5"
    iv = DXFState(app, {}).scheduler_intervals()
    assert (iv.planning_max_retries, iv.planning_retry_max_interval) == (2, 0.5)


@pytest.mark.parametrize(
    ("conf", "needle"),
    [
        ({"dxf_planning_max_retries": -1}, "dxf_planning_max_retries"),
        ({"dxf_planning_retry_max_interval": 0}, "dxf_planning_retry_max_interval"),
        ({"dxf_node_slots": 0}, "dxf_node_slots"),
        ({"dxf_task_check_interval": -1}, "dxf_task_check_interval"),
        ({"dxf_node_slots": "many"}, "dxf_node_slots"),
        ({"dxf_node_ttl": 0.5, "dxf_heartbeat_interval": 1.0}, "dxf_node_ttl"),
        ({"dxf_history_retention": -1}, "dxf_history_retention"),
        ({"dxf_database_url": ""}, "dxf_database_url"),
    ],
)
def test_bad_settings_name_the_setting(conf: dict[str, object], needle: str) -> None:
    with pytest.raises(DXFConfigError, match=needle):
        DXFSettings.from_conf(conf)


def test_node_queue_escapes_the_nodename_injectively() -> None:
    s = DXFSettings()
    assert s.node_queue("w1@host-1.example") == "dxf.node.w1_40host-1.example"
    assert s.node_queue("a@b") != s.node_queue("a_40b")


# ---------------------------------------------------------------------- the DXF object


def test_dxf_attaches_once_and_adds_tasks_steps_and_beat() -> None:
    app = _app(dxf_scheduler_interval=0.4)
    first = DXF(app)
    second = DXF(app)
    assert first.state is second.state and app.dxf is first  # type: ignore[attr-defined]
    assert {"dxf.execute", "dxf.schedule"} <= set(app.tasks)
    assert app.tasks["dxf.execute"].serializer == "json"
    assert sum(1 for step in app.steps["worker"] if step.__name__ == "DXFNodeStep") == 1
    entry = app.conf.beat_schedule["dxf-scheduler"]
    assert entry["schedule"] == 0.4 and entry["options"]["expires"] > 0
    assert entry["options"]["queue"] == first.settings.scheduler_queue


def test_init_app_pattern() -> None:
    dxf = DXF()
    with pytest.raises(DXFConfigError, match="init_app"):
        _ = dxf.settings
    app = _app()
    assert dxf.init_app(app) is dxf and dxf.app is app


def test_dxf_refuses_an_app_that_accepts_pickle() -> None:
    dxf = DXF(_app(accept_content=["json", "pickle"]))
    with pytest.raises(DXFConfigError, match="pickle"):
        _ = dxf.settings


def test_dxf_overrides_win_over_conf_and_must_agree() -> None:
    app = _app(dxf_node_slots=3)
    dxf = DXF(app, node_slots=5)
    assert dxf.settings.node_slots == 5
    with pytest.raises(DXFConfigError, match="already has DXF"):
        DXF(app, node_slots=6)


# ---------------------------------------------------------------------- the executor task body


@pytest.fixture
def local_dxf(tmp_path: Path) -> Iterator[DXF]:
    app = _app(
        dxf_database_url=f"sqlite:///{tmp_path / 'dxf.db'}",
        dxf_cancel_grace=0.3,
        dxf_subtask_check_interval=0.05,
        dxf_max_subtask_check_interval=0.1,
        dxf_watch_task_interval=0.1,
    )
    # Other modules clear the registries: register the type here, not only on import.
    register_task_type(TASK_TYPE, executor_factory)
    register_scheduler_factory(TASK_TYPE, scheduler_factory)
    dxf = DXF(app)
    yield dxf
    dxf.state.dispose()


def _plan(dxf: DXF, node: str) -> None:
    dxf.task_manager.init_meta(node, "", 2)
    sched = SchedulerManager(dxf.task_manager, owner_id="test", intervals=dxf.state.scheduler_intervals())
    try:
        sched.schedule_once()
    finally:
        sched.release()


@pytest.mark.parametrize("subtask_only", [False, True], ids=["cancel", "cancel-running-subtask"])
def test_execute_body_interrupts_step_code_that_ignores_its_context(
    local_dxf: DXF, tmp_path: Path, subtask_only: bool
) -> None:
    """The threads/solo path: a cancel request reaches an executor running in this process."""
    record = tmp_path / "runs.log"
    task = local_dxf.submit_task(
        "busy", TASK_TYPE, meta=e2e_meta(str(record), steps=1, subtasks=1, sleep=600, mode="busy")
    )
    _plan(local_dxf, "n1")
    assert local_dxf.get_task(task.id).state == TaskState.RUNNING
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.update(
            run_execute(
                local_dxf.state,
                celery_id="cid-1",
                hostname="n1",
                task_id=task.id,
                exec_id="n1",
                slots=2,
                memory=0,
                events=False,
            )
        )
    )
    thread.start()
    wait_until(lambda: any(e.kind == "start" for e in read_record(record)), 30, what="the subtask to start")
    assert local_executions.cancel("cid-1", subtask_only)
    thread.join(60)
    assert not thread.is_alive(), "the executor did not stop"
    ends = [e for e in read_record(record) if e.kind == "end"]
    assert [e.outcome for e in ends] == ["ExecutorCancelledError"]
    (subtask,) = local_dxf.get_subtasks(task.id)
    # Cancel leaves the row for a re-run; cancelling the running subtask ends it canceled.
    assert subtask.state == (SubtaskState.CANCELED if subtask_only else SubtaskState.RUNNING)
    assert result["cancel_request"] == ("subtask" if subtask_only else "executor")
    # The task still runs: stopped from outside, the executor was preempted; with only its
    # subtask cancelled it went on and found nothing more to run.
    assert result["ended"] == ("idle" if subtask_only else "preempted")
    assert result["subtask_ends"] == ({"canceled": 1} if subtask_only else {"left": 1})
    assert local_executions.get("cid-1") is None


def test_execute_body_ignores_another_nodes_message(local_dxf: DXF) -> None:
    result = run_execute(
        local_dxf.state, celery_id="x", hostname="n2", task_id=1, exec_id="n1", slots=1, memory=0, events=False
    )
    assert result["skipped"] == "other node"


def test_execute_body_of_a_gone_task_does_nothing(local_dxf: DXF) -> None:
    result = run_execute(
        local_dxf.state, celery_id="x", hostname="n1", task_id=424242, exec_id="n1", slots=1, memory=0, events=False
    )
    assert result["skipped"] == "task is gone"


def test_execute_body_ignores_a_message_from_an_earlier_worker_run(local_dxf: DXF) -> None:
    local_dxf.state.incarnation = "now"
    result = run_execute(
        local_dxf.state,
        celery_id="x",
        hostname="n1",
        task_id=1,
        exec_id="n1",
        slots=1,
        memory=0,
        events=False,
        incarnation="before",
    )
    assert result["skipped"] == "earlier worker run"


def test_launch_tracker_ends_a_launch_never_received_only_after_its_expiry() -> None:
    from dxf_celery.worker.launcher import LaunchTracker

    tracker = LaunchTracker()
    tracker.add("late", 1, expires_in=-10.0)  # already past launch_timeout + grace
    tracker.add("queued", 2, expires_in=-10.0)
    tracker.received("queued")  # received but waiting for a pool slot: never expires
    tracker.add("fresh", 3, expires_in=60.0)
    assert tracker.is_done("late")
    assert not tracker.is_done("queued") and not tracker.is_done("fresh")
    tracker.finished("fresh")  # e.g. revoked before it started
    assert tracker.is_done("fresh") and tracker.is_done("unknown")
