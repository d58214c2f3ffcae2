"""End-to-end: real ``celery worker`` and ``celery beat`` processes, tasks submitted from this test process.

The main scenarios (multi-step over two nodes, cancel and pause on prefork and threads,
Celery's SIGUSR1 revoke, SIGKILL of a worker) run on the brokers and server databases users
deploy on: Redis and RabbitMQ, PostgreSQL and MariaDB (ids such as ``[rabbitmq-mariadb]``;
``DXF_TEST_DATABASES`` drops the MariaDB ones), in a pairwise design: every broker meets
every database, and every pool (or variant) meets every broker and every database, in four
cases instead of eight (:func:`on_stacks`). The others run on Redis + PostgreSQL.

Every wait polls SQL (or the run log the ``e2e`` task type writes) with a generous timeout;
no assertion is about wall-clock time. Work that a test must catch in the middle (to cancel,
pause, revoke, kill or shut down under it) is held open by state: its subtasks run until the
test creates their release file (``hold``), never for a duration guessed to be long enough.
Each test's processes are killed by the fixture finalizer whatever happens, and their logs
are printed when a test fails.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.celery_apps.brokers import fresh_broker
from helpers.celery_apps.dxf_app import FAST_SETTINGS
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.celery_apps.harness import RunEvent, max_parallel_by_node
from helpers.celery_apps.types import release
from helpers.db import SELECTED, make_db_url
from helpers.waiting import wait_until

from dxf_celery.proto import SubtaskState, TaskState
from dxf_celery.scheduler.manager import LEASE_NAME

pytestmark = [pytest.mark.celery, pytest.mark.slow]

POOLS = ["prefork", "threads"]
LEASE_TTL = float(FAST_SETTINGS["dxf_lease_ttl"])
BROKERS = ("redis", "rabbitmq")
DATABASES = tuple(d for d in ("postgresql", "mariadb") if d == "postgresql" or d in SELECTED)
#: (broker, database) pairs; the first is every other test's.
STACKS = [(b, d) for b in BROKERS for d in DATABASES]


def _stack_id(stack: tuple[str, str]) -> str:
    return "-".join(stack)


def on_stacks(*values: Any, argname: str = "pool", first_only: tuple[Any, ...] = ()) -> pytest.MarkDecorator:
    """Parametrize ``e2e`` (and ``argname`` with ``values``) pairwise over brokers and databases.

    Without values: one case per broker and per database (Redis + PostgreSQL, RabbitMQ +
    MariaDB). With two values: the four (broker, database) pairs, the value chosen so each
    value meets each broker and each database ((broker + database) index parity). With one
    database selected: every broker crossed with every value. ``first_only`` values run on
    Redis + PostgreSQL alone.
    """
    if not values:
        diagonal = [(b, DATABASES[i % len(DATABASES)]) for i, b in enumerate(BROKERS)]
        return pytest.mark.parametrize("e2e", diagonal, indirect=True, ids=_stack_id)
    if len(DATABASES) == 1:
        picks = [((b, DATABASES[0]), v) for b in BROKERS for v in values]
    else:
        picks = [
            ((b, d), values[(bi + di) % len(values)]) for bi, b in enumerate(BROKERS) for di, d in enumerate(DATABASES)
        ]
    picks += [(STACKS[0], v) for v in first_only]
    cases = [pytest.param(stack, v, id=f"{_stack_id(stack)}-{_value_id(v, argname)}") for stack, v in picks]
    return pytest.mark.parametrize(("e2e", argname), cases, indirect=["e2e"])


def _value_id(value: Any, argname: str) -> str:
    if isinstance(value, bool):
        return argname if value else f"non-{argname}"
    return str(value)


@pytest.fixture
def e2e(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[E2E]:
    """An empty broker and clean tables, no process yet: Redis + PostgreSQL unless :func:`on_stacks` says."""
    broker, database = getattr(request, "param", STACKS[0])
    yield from make_e2e(tmp_path, fresh_broker(broker), make_db_url(database, tmp_path))


def _ok_runs(events: list[RunEvent], task_id: int) -> Counter[tuple[int, int]]:
    return Counter(
        (e.step, e.ordinal) for e in events if e.task_id == task_id and e.kind == "end" and e.outcome == "ok"
    )


def _assert_each_subtask_ran_once(events: list[RunEvent], task_id: int, steps: int, subtasks: int) -> None:
    starts = Counter((e.step, e.ordinal) for e in events if e.task_id == task_id and e.kind == "start")
    expected = {(s, o): 1 for s in range(1, steps + 1) for o in range(1, subtasks + 1)}
    assert dict(starts) == expected, f"task {task_id}: runs per (step, ordinal) {dict(starts)}"
    assert dict(_ok_runs(events, task_id)) == expected


# ---------------------------------------------------------------------- the happy path


@on_stacks()
def test_multi_step_tasks_run_each_subtask_once_over_two_nodes_within_slots(e2e: E2E) -> None:
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_beat()
    steps, subtasks = 2, 6
    tasks = [
        e2e.dxf.submit_task(f"multi-{i}", "e2e", meta=e2e.meta(steps=steps, subtasks=subtasks, sleep=0.1))
        for i in range(3)
    ]
    for task in tasks:
        assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    events = e2e.events()
    for task in tasks:
        _assert_each_subtask_ran_once(events, task.id, steps, subtasks)
    assert {e.exec_id for e in events} == {"w1@e2e", "w2@e2e"}, "subtasks were not spread over both nodes"
    # Three concurrency-1 tasks on 2-slot nodes: never more than 2 executors (so 2 subtasks) per node.
    peaks = max_parallel_by_node(events)
    assert all(peak <= 2 for peak in peaks.values()), peaks


# ---------------------------------------------------------------------- cancel, pause, resume


@on_stacks(*POOLS, first_only=("solo",))
def test_cancel_stops_a_subtask_blocked_in_python(e2e: E2E, pool: str) -> None:
    e2e.procs.start_worker("w1@e2e", pool=pool, concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool=pool, concurrency=3, slots=2)
    e2e.procs.start_beat()
    # "busy" subtasks loop in Python until released (never, here) and never look at their context.
    task = e2e.dxf.submit_task(
        "cancel-me", "e2e", meta=e2e.meta(steps=1, subtasks=4, mode="busy", hold=e2e.hold("never"))
    )
    wait_until(lambda: len(e2e.running_subtasks(task.id)) >= 2, 60, what="two subtasks running")
    assert e2e.dxf.cancel_task(task.id)
    final = e2e.dxf.wait_task(task.id, timeout=60, raise_error=False)
    assert final.state == TaskState.REVERTED
    assert "cancelled by user" in str(final.error)

    def all_stopped() -> bool:
        events = [e for e in e2e.events() if e.task_id == task.id]
        starts = [e for e in events if e.kind == "start"]
        ends = [e for e in events if e.kind == "end"]
        return bool(starts) and len(ends) == len(starts)

    # Never released: they ended because the framework interrupted them.
    wait_until(all_stopped, 60, what="every started subtask to stop")
    ends = [e for e in e2e.events() if e.task_id == task.id and e.kind == "end"]
    assert all(e.outcome == "ExecutorCancelledError" for e in ends), ends
    states = {s.state for s in e2e.dxf.get_subtasks(task.id)}
    assert states <= {SubtaskState.CANCELED, SubtaskState.PENDING}, states
    assert SubtaskState.CANCELED in states
    assert e2e.procs.procs["w1@e2e"].alive() and e2e.procs.procs["w2@e2e"].alive()


@pytest.mark.parametrize("pool", POOLS)
def test_cancel_stops_step_code_that_swallows_exception(e2e: E2E, pool: str) -> None:
    """``except Exception: pass`` around sleeps cannot keep a cancelled subtask running."""
    e2e.procs.start_worker("w1@e2e", pool=pool, concurrency=3, slots=2)
    e2e.procs.start_beat()
    task = e2e.dxf.submit_task("swallow-me", "e2e", meta=e2e.meta(steps=1, subtasks=1, sleep=600, mode="swallow"))
    wait_until(lambda: e2e.running_subtasks(task.id), 60, what="the subtask running")
    wait_until(lambda: any(e.kind == "start" for e in e2e.events()), 60, what="the step code to start")
    assert e2e.dxf.cancel_task(task.id)
    final = e2e.dxf.wait_task(task.id, timeout=60, raise_error=False)
    assert final.state == TaskState.REVERTED
    wait_until(lambda: [e for e in e2e.events() if e.kind == "end"], 60, what="the step code to stop")
    ends = [e for e in e2e.events() if e.kind == "end"]
    assert [e.outcome for e in ends] == ["ExecutorCancelledError"]
    assert {s.state for s in e2e.dxf.get_subtasks(task.id)} == {SubtaskState.CANCELED}
    assert e2e.procs.procs["w1@e2e"].alive()


@on_stacks(*POOLS, first_only=("solo",))
def test_pause_then_resume_succeeds(e2e: E2E, pool: str) -> None:
    e2e.procs.start_worker("w1@e2e", pool=pool, concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool=pool, concurrency=3, slots=2)
    e2e.procs.start_beat()
    steps, subtasks = 2, 4
    hold = e2e.hold("pause-me")
    task = e2e.dxf.submit_task("pause-me", "e2e", meta=e2e.meta(steps=steps, subtasks=subtasks, hold=hold))
    wait_until(lambda: e2e.running_subtasks(task.id), 60, what="a subtask running")
    assert e2e.dxf.pause_task(task.id)
    paused = e2e.dxf.wait_task(task.id, timeout=60)
    assert paused.state == TaskState.PAUSED
    assert not e2e.running_subtasks(task.id)
    assert not _ok_runs(e2e.events(), task.id), "a held subtask finished before its release"
    assert e2e.dxf.resume_task(task.id)
    release(hold)
    assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    ok = _ok_runs(e2e.events(), task.id)
    expected = {(s, o) for s in range(1, steps + 1) for o in range(1, subtasks + 1)}
    assert set(ok) == expected and all(n == 1 for n in ok.values()), ok


@on_stacks()
def test_celery_revoke_with_sigusr1_cancels_the_executor_cooperatively(e2e: E2E) -> None:
    """``revoke(id, terminate=True, signal="SIGUSR1")`` (Flower's revoke button) = executor cancel()."""
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=2, slots=2)
    e2e.procs.start_beat()
    task = e2e.dxf.submit_task("revoke-me", "e2e", meta=e2e.meta(steps=1, subtasks=1, hold=e2e.hold("never")))

    def executor_request() -> str | None:
        active = e2e.app.control.inspect(destination=["w1@e2e"], timeout=2).active() or {}
        ids = [r["id"] for r in active.get("w1@e2e", []) if str(r.get("name", "")).startswith("dxf.execute[")]
        return ids[0] if ids and e2e.running_subtasks(task.id) else None

    celery_id = wait_until(executor_request, 60, what="the executor's Celery request")
    assert celery_id is not None
    e2e.app.control.revoke(celery_id, terminate=True, signal="SIGUSR1")

    def rerun() -> bool:
        starts = [e for e in e2e.events() if e.task_id == task.id and e.kind == "start"]
        return len(starts) >= 2

    # The executor stops (context cancelled, row left running), the node sees its request end
    # and starts a new executor, which re-runs the idempotent subtask: nothing is lost.
    wait_until(rerun, 60, what="the subtask to run again after the revoke")
    first_end = next(e for e in e2e.events() if e.task_id == task.id and e.kind == "end")
    assert first_end.outcome == "ContextCancelledError"
    assert e2e.dxf.cancel_task(task.id)
    assert e2e.dxf.wait_task(task.id, timeout=60, raise_error=False).state == TaskState.REVERTED


# ---------------------------------------------------------------------- a worker dies


@on_stacks(True, False, argname="idempotent")
def test_sigkilled_worker(e2e: E2E, idempotent: bool) -> None:
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_beat()
    subtasks = 4
    hold = e2e.hold("kill-me")
    task = e2e.dxf.submit_task(
        "kill-me", "e2e", meta=e2e.meta(steps=1, subtasks=subtasks, hold=hold, idempotent=idempotent)
    )

    def started_on_w1() -> list[object]:
        # The row turns running just before the type records its start: kill only once both
        # are there, or the killed run may never have reached the record.
        started = {
            e.ordinal for e in e2e.events() if e.task_id == task.id and e.kind == "start" and e.exec_id == "w1@e2e"
        }
        return [s for s in e2e.running_subtasks(task.id, "w1@e2e") if s.ordinal in started]  # type: ignore[attr-defined]

    victim = wait_until(started_on_w1, 60, what="a subtask running on w1")[0]
    e2e.procs.kill("w1@e2e")
    release(hold)  # the held subtasks may end now; the killed run on w1 cannot
    final = e2e.dxf.wait_task(task.id, timeout=120, raise_error=False)
    events = [e for e in e2e.events() if e.task_id == task.id]
    victim_starts = [e for e in events if e.kind == "start" and e.ordinal == victim.ordinal]  # type: ignore[attr-defined]
    assert victim_starts[0].exec_id == "w1@e2e"
    if idempotent:
        assert final.state == TaskState.SUCCEED
        ok = _ok_runs(events, task.id)
        assert set(ok) == {(1, o) for o in range(1, subtasks + 1)} and all(n == 1 for n in ok.values()), ok
        # The killed run re-ran on the surviving node.
        assert [e.exec_id for e in victim_starts] == ["w1@e2e", "w2@e2e"]
    else:
        assert final.state == TaskState.REVERTED
        assert "not idempotent" in str(final.error)
        assert len(victim_starts) == 1, "a non-idempotent subtask ran twice"
    wait_until(
        lambda: all(n.id != "w1@e2e" for n in e2e.dxf.task_manager.get_all_nodes()),
        60,
        what="the dead node to be removed",
    )


# ---------------------------------------------------------------------- remote control


@pytest.mark.parametrize("e2e", [s for s in STACKS if s[1] == "postgresql"], indirect=True, ids=_stack_id)
def test_remote_control_reaches_every_node(e2e: E2E) -> None:
    """``dxf_wake`` (sent after user actions) and ``inspect dxf_node`` get through on each broker.

    The scenarios above would pass without them (the node loops poll SQL): only the replies
    show that the broadcast reached both nodes' mailboxes.
    """
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=2, slots=2)
    e2e.procs.start_worker("w2@e2e", pool="threads", concurrency=2, slots=2)
    nodes = {"w1@e2e", "w2@e2e"}

    def replies(command: str) -> dict[str, Any] | None:
        got: dict[str, Any] = {}
        for reply in e2e.app.control.broadcast(command, reply=True, timeout=2) or []:
            got.update(reply)
        return got if set(got) >= nodes else None

    # A worker's mailbox exists a moment after its node row: retry until both answer.
    woken = wait_until(lambda: replies("dxf_wake"), 60, what="dxf_wake replies from both nodes")
    assert all(woken[n] == {"ok": "woken"} for n in nodes), woken
    described = wait_until(lambda: replies("dxf_node"), 60, what="dxf_node replies from both nodes")
    assert all(described[n]["registered"] is True and described[n]["node"] == n for n in nodes), described
    assert (described["w1@e2e"]["pool"], described["w2@e2e"]["pool"]) == ("prefork", "threads"), described


# ---------------------------------------------------------------------- beat


def test_beat_stopped_then_restarted_completes(e2e: E2E) -> None:
    e2e.procs.start_worker("w1@e2e", pool="threads", concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool="threads", concurrency=3, slots=2)
    e2e.procs.start_beat("beat")
    steps = 5
    hold = e2e.hold("beatless")  # step 1 stays open until beat is gone
    task = e2e.dxf.submit_task("beatless", "e2e", meta=e2e.meta(steps=steps, subtasks=2, hold=hold))
    wait_until(lambda: e2e.dxf.get_task(task.id).step == 1, 60, what="step 1")
    e2e.procs.stop("beat")
    tm = e2e.dxf.task_manager
    # The scheduler stops once the last tick is older than the lease TTL: its lease row
    # lapses then (seen in SQL, not guessed from the clock), and only then is step 1 let go.
    wait_until(lambda: tm.get_lease_owner(LEASE_NAME) is None, 60, what="the scheduler lease to lapse")
    release(hold)

    def step_1_done() -> bool:
        subs = e2e.dxf.get_subtasks(task.id, step=1)
        return bool(subs) and all(s.state == SubtaskState.SUCCEED for s in subs)

    # Running executors finish the subtasks they have without beat ...
    wait_until(step_1_done, 60, what="step 1's subtasks to finish without beat")
    # ... and nothing plans step 2. A thing that must not happen can only be watched for a
    # while: a few lease periods, failing at the first change.
    frozen = e2e.dxf.get_task(task.id)
    assert (frozen.step, frozen.state) == (1, TaskState.RUNNING)
    watch_until = time.monotonic() + 2 * LEASE_TTL
    while time.monotonic() < watch_until:
        again = e2e.dxf.get_task(task.id)
        assert (again.step, again.state) == (1, TaskState.RUNNING), "the task advanced without beat"
        time.sleep(0.1)
    e2e.procs.start_beat("beat-again")
    assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    _assert_each_subtask_ran_once(e2e.events(), task.id, steps, 2)


def test_two_beats_change_nothing_but_timing(e2e: E2E) -> None:
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_worker("w2@e2e", pool="threads", concurrency=3, slots=2)
    e2e.procs.start_beat("beat-a")
    e2e.procs.start_beat("beat-b")
    tasks = [
        e2e.dxf.submit_task(f"two-beats-{i}", "e2e", meta=e2e.meta(steps=3, subtasks=3, sleep=0.05)) for i in range(2)
    ]
    for task in tasks:
        assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    events = e2e.events()
    for task in tasks:
        _assert_each_subtask_ran_once(events, task.id, 3, 3)


# ---------------------------------------------------------------------- unknown types


def test_unknown_type_fails_clearly_and_the_worker_survives(e2e: E2E, caplog: pytest.LogCaptureFixture) -> None:
    worker = e2e.procs.start_worker(
        "bare@e2e", pool="prefork", concurrency=2, slots=2, extra_env={"DXF_E2E_TYPES": "0"}
    )
    # The worker registered its node with the types it imported: none.
    assert [n.task_types for n in e2e.dxf.task_manager.get_all_nodes()] == [()]
    e2e.procs.start_beat()
    with caplog.at_level("WARNING", logger="dxf_celery.handle"):
        unknown = e2e.dxf.submit_task("no-such-type", "no_such_type")
        not_here = e2e.dxf.submit_task("not-on-this-worker", "e2e", meta=e2e.meta(steps=1, subtasks=2))
    for type_name in ("no_such_type", "e2e"):
        assert f"no live worker registered the task type {type_name!r}" in caplog.text, caplog.text
    for task, type_name in ((unknown, "no_such_type"), (not_here, "e2e")):
        final = e2e.dxf.wait_task(task.id, timeout=60, raise_error=False)
        assert final.state == TaskState.FAILED
        assert type_name in str(final.error) and final.error is not None
        assert final.error.type_name == "UnknownTaskTypeError"
    assert worker.alive()

    def node_reply() -> list[dict[str, Any]] | None:
        return e2e.app.control.broadcast("dxf_node", destination=["bare@e2e"], reply=True, timeout=5)

    replies = wait_until(node_reply, 60, what="a dxf_node reply from bare@e2e")
    assert replies and replies[0]["bare@e2e"]["registered"] is True, replies
    # A worker that imports the type reports it in its row.
    e2e.procs.start_worker("typed@e2e", pool="threads", concurrency=2, slots=2)
    types = {n.id: n.task_types for n in e2e.dxf.task_manager.get_all_nodes()}
    assert types["bare@e2e"] == () and "e2e" in (types["typed@e2e"] or ()), types


# ---------------------------------------------------------------------- shutdown and monitoring


def test_warm_shutdown_removes_the_node_and_the_other_node_finishes(e2e: E2E) -> None:
    # A drain grace shorter than the hold: the subtask still running at its end is abandoned
    # (tests/celery/test_worker_drain.py has the drain that lets it finish).
    short_drain = {"DXF_E2E_CONF": json.dumps({"dxf_drain_grace": 1})}
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=3, slots=2, extra_env=short_drain)
    e2e.procs.start_worker("w2@e2e", pool="prefork", concurrency=3, slots=2)
    e2e.procs.start_beat()
    hold = e2e.hold("drain-me")
    task = e2e.dxf.submit_task("drain-me", "e2e", meta=e2e.meta(steps=1, subtasks=4, hold=hold))
    wait_until(lambda: e2e.running_subtasks(task.id, "w1@e2e"), 60, what="a subtask running on w1")
    e2e.procs.stop("w1@e2e")  # SIGTERM: warm shutdown, while w1's subtask is still held
    # The node row goes at shutdown (not after dxf_node_ttl): gone as soon as the process is.
    assert all(n.id != "w1@e2e" for n in e2e.dxf.task_manager.get_all_nodes())
    release(hold)
    assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    events = [e for e in e2e.events() if e.task_id == task.id]
    interrupted = [e for e in events if e.kind == "end" and e.exec_id == "w1@e2e" and e.outcome != "ok"]
    assert interrupted, "the running subtask on w1 was not cancelled by the warm shutdown"
    ok = _ok_runs(events, task.id)
    assert set(ok) == {(1, o) for o in range(1, 5)} and all(n == 1 for n in ok.values()), ok


def test_executor_requests_are_readable_and_send_progress_events(e2e: E2E) -> None:
    captured: list[dict[str, object]] = []
    ready = threading.Event()

    def capture() -> None:
        with e2e.app.connection_for_read() as conn:
            receiver = e2e.app.events.Receiver(conn, handlers={"*": captured.append})
            receivers.append(receiver)
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=False)

    receivers: list[object] = []
    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    assert ready.wait(30)
    e2e.procs.start_worker("w1@e2e", pool="prefork", concurrency=2, slots=2, extra_args=("-E",))
    # The receiver is subscribed once it has heard the worker (online, heartbeat): only then
    # submit, so no event of the task can go out before anyone listens.
    wait_until(lambda: any(e.get("hostname") == "w1@e2e" for e in list(captured)), 60, what="a first event from w1")
    e2e.procs.start_beat()
    task = e2e.dxf.submit_task("watch-me", "e2e", meta=e2e.meta(steps=1, subtasks=3, sleep=0.7))
    assert e2e.dxf.wait_task(task.id, timeout=60).state == TaskState.SUCCEED

    def progress_seen() -> list[dict[str, object]]:
        return [
            e
            for e in list(captured)
            if e.get("type") == "task-progress" and e.get("dxf_task_id") == task.id and e.get("subtasks_done") == 3
        ]

    seen_types = sorted({str(e.get("type")) for e in list(captured)})
    final = wait_until(progress_seen, 30, what=f"a final task-progress event (saw {seen_types})")[-1]
    assert final["subtasks_total"] == 3 and final["dxf_key"] == "watch-me" and final["node"] == "w1@e2e"
    received = [e for e in list(captured) if e.get("type") == "task-received"]
    assert any(
        str(e.get("name", "")).startswith(f"dxf.execute[task={task.id} key=watch-me type=e2e]")
        and "watch-me" in str(e.get("args"))
        for e in received
    ), received
    for receiver in receivers:
        receiver.should_stop = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- embedded default


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[E2E]:
    """SQLite file + ``filesystem://`` broker with a control folder: no server at all."""
    fs_dir = tmp_path / "broker"
    db_url = make_db_url("sqlite", tmp_path)
    yield from make_e2e(tmp_path, "filesystem://", db_url, fs_dir=str(fs_dir))


def test_embedded_default_smoke(embedded: E2E) -> None:
    embedded.procs.start_worker("w1@fs", pool="prefork", concurrency=3, slots=2)
    embedded.procs.start_worker("w2@fs", pool="prefork", concurrency=3, slots=2)
    embedded.procs.start_beat()
    task = embedded.dxf.submit_task("fs-multi", "e2e", meta=embedded.meta(steps=2, subtasks=4, sleep=0.05))
    assert embedded.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    _assert_each_subtask_ran_once(embedded.events(), task.id, 2, 4)
    blocked = embedded.dxf.submit_task(
        "fs-cancel", "e2e", meta=embedded.meta(steps=1, subtasks=2, mode="busy", hold=embedded.hold("never"))
    )
    wait_until(lambda: embedded.running_subtasks(blocked.id), 60, what="a blocked subtask running")
    embedded.dxf.cancel_task(blocked.id)
    assert embedded.dxf.wait_task(blocked.id, timeout=60, raise_error=False).state == TaskState.REVERTED
    wait_until(
        lambda: all(
            any(e.kind == "end" and e.ordinal == s.ordinal for e in embedded.events() if e.task_id == blocked.id)
            for s in embedded.events()
            if s.task_id == blocked.id and s.kind == "start"
        ),
        60,
        what="the blocked subtask to stop",
    )
