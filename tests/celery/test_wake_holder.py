"""Scheduler wake-ups go to the lease holder's own wake queue, not to whichever node the broker picks.

A wake-up that a non-holder takes is refused (it cannot get the lease) and the holder waits
for its own timer; so submits, cancels and a step's last subtask finishing send theirs to
``dxf_node_wake_queue(holder)``, and to the shared scheduler queue only when no holder is
known. The first test reads the queues on the real Redis with no worker; the second runs two
real workers and beat and counts, on each node, the wake-ups that reached its own queue.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.celery_apps.brokers import REDIS_URL, fresh_broker
from helpers.celery_apps.dxf_app import create_app
from helpers.celery_apps.e2e import E2E, make_e2e
from helpers.db import make_db_url
from helpers.paths import REPO_ROOT, TESTS_DIR
from helpers.waiting import wait_until

from dxf_celery.proto import TaskState
from dxf_celery.scheduler.manager import LEASE_NAME
from dxf_celery.worker.bootsteps import direct_queue

pytestmark = [pytest.mark.celery]


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    yield from make_e2e(tmp_path, fresh_broker("redis"), make_db_url("postgresql", tmp_path))


def _queued(client: redis.Redis, queue: str) -> list[str]:
    """Reasons (sorted) of the wake-ups waiting in ``queue`` (kombu's Redis transport: a list per queue)."""
    reasons = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        reasons.append(body[1]["reason"])
    return sorted(reasons)


def test_wakeup_goes_to_the_holders_queue_and_to_the_shared_queue_without_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DXF_E2E_CONF", json.dumps({"dxf_wakeup_coalesce": 0}))  # routing only: one per write
    broker = fresh_broker("redis")
    app, dxf = create_app(broker=broker, db_url=make_db_url("postgresql", tmp_path))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        settings = dxf.settings
        holder = "w9@wake"
        wake_queue = settings.node_wake_queue(holder)
        # Kombu's Redis transport keeps a message only for a queue bound to its exchange.
        with app.connection_for_write() as conn:
            for name in (settings.scheduler_queue, wake_queue):
                direct_queue(name)(conn.default_channel).declare()

        dxf.submit_task("no-holder", "e2e")  # no lease row: the shared queue, as before
        assert _queued(client, settings.scheduler_queue) == ["submit"]
        assert _queued(client, wake_queue) == []

        tm = dxf.task_manager
        tm.init_meta(holder, "", 2)
        assert tm.try_acquire_lease(LEASE_NAME, holder, 60)
        assert dxf.state.scheduler_holder(max_age=0) == holder
        dxf.cancel_task(dxf.submit_task("with-holder", "e2e").id)
        assert _queued(client, wake_queue) == ["cancel", "submit"]
        assert _queued(client, settings.scheduler_queue) == ["submit"]

        # A lease held under a name no node registered (a pass run in a pool) is no holder.
        tm.release_lease(LEASE_NAME, holder)
        assert tm.try_acquire_lease(LEASE_NAME, "dxf.schedule@123", 60)
        assert dxf.state.scheduler_holder(max_age=0) is None
        dxf.wake()
        assert _queued(client, settings.scheduler_queue) == ["submit", "wake"]
    finally:
        client.close()
        dxf.state.dispose()
        app.close()


def test_a_loop_of_submits_sends_one_wakeup_then_one_trailing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A window far longer than the loop, so that the count does not depend on the machine's speed.
    monkeypatch.setenv("DXF_E2E_CONF", json.dumps({"dxf_wakeup_coalesce": 3.0}))
    app, dxf = create_app(broker=fresh_broker("redis"), db_url=make_db_url("postgresql", tmp_path))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        settings = dxf.settings
        holder = "w9@wake"
        wake_queue = settings.node_wake_queue(holder)
        with app.connection_for_write() as conn:
            direct_queue(wake_queue)(conn.default_channel).declare()
        tm = dxf.task_manager
        tm.init_meta(holder, "", 2)
        assert tm.try_acquire_lease(LEASE_NAME, holder, 60)
        for i in range(20):
            dxf.submit_task(f"loop-{i}", "e2e")
        assert _queued(client, wake_queue) == ["submit"]  # the first one, at once
        # The last submits are not left to beat: one trailing wake-up follows them.
        wait_until(lambda: len(_queued(client, wake_queue)) >= 2, 30, what="the trailing wake-up")
        assert _queued(client, wake_queue) == ["submit", "submit"]
    finally:
        client.close()
        dxf.state.dispose()
        app.close()


_SUBMIT_TWICE_AND_EXIT = """
import sys
from helpers.celery_apps.dxf_app import create_app
app, dxf = create_app(broker=sys.argv[1], db_url=sys.argv[2])
dxf.submit_task("exit-1", "e2e")
dxf.submit_task("exit-2", "e2e")  # coalesced: its wake-up is the trailing one
"""


def test_a_script_that_exits_right_after_its_submits_still_sends_the_trailing_wakeup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = json.dumps({"dxf_wakeup_coalesce": 60.0})  # the timer cannot fire before the exit
    monkeypatch.setenv("DXF_E2E_CONF", conf)
    broker, db_url = fresh_broker("redis"), make_db_url("postgresql", tmp_path)
    app, dxf = create_app(broker=broker, db_url=db_url)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        settings = dxf.settings
        holder = "w9@wake"
        wake_queue = settings.node_wake_queue(holder)
        with app.connection_for_write() as conn:
            direct_queue(wake_queue)(conn.default_channel).declare()
        tm = dxf.task_manager
        tm.init_meta(holder, "", 2)
        assert tm.try_acquire_lease(LEASE_NAME, holder, 60)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]), DXF_E2E_CONF=conf)
        done = subprocess.run(
            [sys.executable, "-c", _SUBMIT_TWICE_AND_EXIT, broker, db_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert _queued(client, wake_queue) == ["submit", "submit"]  # the second flushed at exit
    finally:
        client.close()
        dxf.state.dispose()
        app.close()


def _direct_wakeups(e2e: E2E, nodes: set[str]) -> dict[str, dict[str, Any]] | None:
    got: dict[str, Any] = {}
    for reply in e2e.app.control.broadcast("dxf_node", reply=True, timeout=2) or []:
        got.update(reply)
    if not set(got) >= nodes:
        return None
    return {n: got[n] for n in nodes}


def test_submits_and_finished_steps_wake_the_lease_holder_on_its_own_queue(e2e: E2E) -> None:
    nodes = {"w1@wake", "w2@wake"}
    # A long lease: on a loaded machine a 2 s lease can lapse between two slow passes and move,
    # and the counts below are only meaningful while one node holds it throughout.
    conf = {"DXF_E2E_CONF": json.dumps({"dxf_lease_ttl": 30.0})}
    for name in sorted(nodes):
        e2e.procs.start_worker(name, pool="prefork", concurrency=2, slots=2, extra_env=conf)
    e2e.procs.start_beat()
    tm = e2e.dxf.task_manager
    holder = wait_until(lambda: tm.get_lease_owner(LEASE_NAME), 60, what="a scheduler lease holder")
    (other,) = nodes - {holder}

    def holder_knows() -> dict[str, dict[str, Any]] | None:
        # The lease row is written at the start of a pass, the node's flag once the pass is over.
        got = _direct_wakeups(e2e, nodes)
        return got if got is not None and got[holder]["scheduler_lease"] is True else None

    before = wait_until(holder_knows, 60, what="both nodes to reply, the holder knowing it holds the lease")

    tasks = [e2e.dxf.submit_task(f"wake-{i}", "e2e", meta=e2e.meta(steps=2, subtasks=2)) for i in range(3)]
    for task in tasks:
        assert e2e.dxf.wait_task(task.id, timeout=120).state == TaskState.SUCCEED
    assert tm.get_lease_owner(LEASE_NAME) == holder, "the lease moved during the test: its counts mean nothing"

    after = wait_until(lambda: _direct_wakeups(e2e, nodes), 60, what="dxf_node replies from both nodes")
    got = after[holder]["direct_wakeups"]
    # Coalesced (dxf_wakeup_coalesce): the first submit's at once, the others' as one trailing
    # wake-up, or each its own when the loop is slower than the window.
    submits = got.get("submit", 0) - before[holder]["direct_wakeups"].get("submit", 0)
    assert 2 <= submits <= len(tasks), after
    # Steps ended by a last subtask whose executor woke the holder. Not one per step: when a
    # timer pass of the holder switches the step first, the executor finds the next step's
    # subtasks instead of an empty node, and rightly sends nothing.
    assert got.get("step-done", 0) >= 1, after
    assert after[other]["direct_wakeups"] == {}, after

    # Beat's ticks that the other node takes are passed on to the holder, so that it stays
    # armed however the broker shares the ticks out (and never to the other node).
    def beats() -> dict[str, dict[str, Any]] | None:
        got = _direct_wakeups(e2e, nodes)
        return got if got is not None and got[holder]["direct_wakeups"].get("beat", 0) >= 1 else None

    forwarded = wait_until(beats, 60, what="a beat tick forwarded to the holder")
    assert "beat" not in forwarded[other]["direct_wakeups"], forwarded
