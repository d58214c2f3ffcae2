"""Node liveness under real faults (issue 9): a database outage, a frozen node, a killed node.

Two prefork workers and a beat on a private PostgreSQL (stopped and started at will), with a
short TTL and lost grace. Every subtask is non-idempotent and held open by a file until the
test releases it, so "did a running subtask move" and "did anything run twice" are read from
the rows and from the run log, never from timing.

* PostgreSQL down for 2.5 TTLs: no node is declared dead on its return, no running subtask
  moves, the task succeeds and nothing ran twice (before the fix, the first pass back deleted
  every node and the task reverted).
* A node frozen (SIGSTOP) past the TTL but within the grace keeps its running subtask and
  finishes it once resumed.
* A node SIGKILLed mid-subtask: after the grace its task reverts with the non-idempotent
  error, and the killed subtask never ran a second time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from helpers.celery_apps.dxf_app import create_app
from helpers.celery_apps.harness import CeleryProcesses, read_record
from helpers.celery_apps.servers import PrivatePostgres, postgres_available
from helpers.celery_apps.types import e2e_meta, release
from helpers.waiting import wait_until

from dxf_celery.errors import DXFError, TaskFailedError
from dxf_celery.proto import SubtaskBase, SubtaskState, TaskState
from dxf_celery.storage import migrate
from dxf_celery.storage.clock import read_server_now

pytestmark = [
    pytest.mark.celery,
    pytest.mark.slow,
    pytest.mark.fault,
    pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL's initdb and pg_ctl"),
]

REDIS_URL = os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
TTL = 3.0
LOST_GRACE = 8.0
CONF = {"dxf_heartbeat_interval": 0.3, "dxf_node_ttl": TTL, "dxf_node_lost_grace": LOST_GRACE}
NODES = ("w1@liveness", "w2@liveness")


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


class World:
    """A private PostgreSQL, two workers and a beat; one held, non-idempotent task at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.pg = PrivatePostgres()
        self.pg.start()
        migrate(self.pg.url)
        self.app, self.dxf = create_app(broker=REDIS_URL, db_url=self.pg.url)
        self.tm = self.dxf.task_manager
        self.record = tmp_path / "runs.log"
        self.hold = tmp_path / "release"
        env = {"DXF_E2E_BROKER": REDIS_URL, "DXF_E2E_DB_URL": self.pg.url, "DXF_E2E_CONF": json.dumps(CONF)}
        self.procs = CeleryProcesses(tmp_path, env, self.tm)
        for name in NODES:
            self.procs.start_worker(name, concurrency=3, slots=2)
        self.procs.start_beat()

    def submit_held(self, key: str, subtasks: int = 4) -> int:
        meta = e2e_meta(str(self.record), steps=1, subtasks=subtasks, idempotent=False, hold=self.hold)
        return self.dxf.submit_task(key, "e2e", meta=meta).id

    def running(self, task_id: int) -> list[SubtaskBase]:
        try:
            return [s for s in self.tm.get_active_subtasks(task_id) if s.state == SubtaskState.RUNNING]
        except DXFError:
            return []  # the database is down: not yet

    def wait_running_on_both(self, task_id: int) -> dict[int, str]:
        """Each node runs one subtask of the task (one per task per node); returns id -> node."""
        wait_until(lambda: {s.exec_id for s in self.running(task_id)} == set(NODES), 120, what="a subtask per node")
        wait_until(lambda: len(self.starts(task_id)) >= 2, 60, what="both subtasks inside the step code")
        return {s.id: s.exec_id for s in self.running(task_id)}

    def starts(self, task_id: int) -> list[tuple[int, str]]:
        return [(e.ordinal, e.exec_id) for e in read_record(self.record) if e.kind == "start" and e.task_id == task_id]

    def heartbeat_age(self, node: str) -> float:
        with self.tm.read_engine.connect() as conn:
            now = read_server_now(conn)
        rows = [n for n in self.tm.get_all_nodes() if n.id == node and n.heartbeat is not None]
        if not rows:
            return float("inf")  # deleted as dead (or not registered yet)
        return (now - rows[0].heartbeat) / timedelta(seconds=1)

    def close(self) -> None:
        try:
            release(self.hold)
            self.procs.close()
            print(self.procs.logs())
            self.dxf.state.dispose()
            self.app.close()
        finally:
            self.pg.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    _flush(REDIS_URL)
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def _ordinals_started_once(world: World, task_id: int) -> None:
    ordinals = [o for o, _ in world.starts(task_id)]
    assert sorted(ordinals) == sorted(set(ordinals)), f"a subtask ran twice: {world.starts(task_id)}"


def test_database_outage_declares_no_node_dead_and_moves_no_running_subtask(world: World) -> None:
    task_id = world.submit_held("outage")
    placed = world.wait_running_on_both(task_id)
    world.pg.stop()
    time.sleep(TTL * 2.5)  # the outage itself: every heartbeat is far past the TTL when it ends
    world.pg.start()

    def same_nodes_same_places() -> None:
        try:
            nodes = {n.id for n in world.tm.get_all_nodes()}
            rows = {s.id: s for s in world.tm.get_subtasks(task_id, 1)}
        except DXFError:
            return  # still reconnecting
        assert nodes == set(NODES), f"a node was declared dead after the outage: {nodes}"
        for sub_id, node in placed.items():
            assert rows[sub_id].exec_id == node, f"running subtask {sub_id} moved off {node}"
            assert rows[sub_id].state == SubtaskState.RUNNING

    # Watch for a full TTL plus the grace after the outage: long enough for any verdict.
    watch_end = time.monotonic() + TTL + LOST_GRACE
    wait_until(lambda: world.heartbeat_age(NODES[0]) < TTL and world.heartbeat_age(NODES[1]) < TTL, 60, what="beats")
    while time.monotonic() < watch_end:
        same_nodes_same_places()
        time.sleep(0.2)
    release(world.hold)
    assert world.dxf.wait_task(task_id, timeout=120).state == TaskState.SUCCEED
    _ordinals_started_once(world, task_id)


def test_node_frozen_within_the_grace_keeps_and_finishes_its_subtask(world: World) -> None:
    task_id = world.submit_held("frozen")
    placed = world.wait_running_on_both(task_id)
    frozen = NODES[1]
    (held_id,) = [i for i, n in placed.items() if n == frozen]
    world.procs.procs[frozen].signal(signal.SIGSTOP)
    try:
        wait_until(lambda: world.heartbeat_age(frozen) > TTL * 1.5, 60, what="the frozen node past the TTL")
        # Suspect: its pending subtask moves to the live node, its running one stays.
        wait_until(
            lambda: all(s.exec_id == NODES[0] for s in world.tm.get_active_subtasks(task_id) if s.id not in placed),
            60,
            what="the frozen node's pending subtask moved",
        )
        (row,) = [s for s in world.tm.get_subtasks(task_id, 1) if s.id == held_id]
        assert (row.exec_id, row.state) == (frozen, SubtaskState.RUNNING)
        assert frozen in {n.id for n in world.tm.get_all_nodes()}
    finally:
        world.procs.procs[frozen].signal(signal.SIGCONT)
    wait_until(lambda: world.heartbeat_age(frozen) < TTL, 60, what="the node back")
    release(world.hold)
    assert world.dxf.wait_task(task_id, timeout=120).state == TaskState.SUCCEED
    (row,) = [s for s in world.tm.get_subtasks(task_id, 1) if s.id == held_id]
    assert (row.exec_id, row.state) == (frozen, SubtaskState.SUCCEED)
    _ordinals_started_once(world, task_id)


def test_killed_node_reverts_its_non_idempotent_task_after_the_grace(world: World) -> None:
    task_id = world.submit_held("killed")
    placed = world.wait_running_on_both(task_id)
    victim = NODES[1]
    (held_id,) = [i for i, n in placed.items() if n == victim]
    (ordinal,) = [s.ordinal for s in world.tm.get_subtasks(task_id, 1) if s.id == held_id]
    world.procs.kill(victim)
    wait_until(lambda: world.heartbeat_age(victim) > TTL * 1.5, 60, what="the killed node past the TTL")
    (row,) = [s for s in world.tm.get_subtasks(task_id, 1) if s.id == held_id]
    assert row.exec_id == victim  # suspect: still its own within the grace
    with pytest.raises(TaskFailedError) as err:
        world.dxf.wait_task(task_id, timeout=120)
    task = world.tm.get_task_by_id_with_history(task_id)
    assert task.state == TaskState.REVERTED
    assert "idempotent" in str(task.error), task.error
    assert victim not in {n.id for n in world.tm.get_all_nodes()}
    assert [o for o, _ in world.starts(task_id)].count(ordinal) == 1, "the killed subtask ran again"
    assert "idempotent" in str(err.value)
