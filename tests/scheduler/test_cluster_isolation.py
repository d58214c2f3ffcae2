"""LocalClusters sharing one database: unique node names, no node rows left behind, isolation.

One after the other, a cluster never sees the nodes of the one before (they are deleted at
stop, also when the test body or the start failed). At once, two clusters on one database
are one DXF cluster unless each is ``isolated``: then its tasks, submitted with
``target_scope=cluster.scope``, run only on its own nodes. The concurrent tests run each
cluster in its own spawned process, as two test processes would, and read back from the
demo type's recorder which node ran each subtask.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster_types import RECORDER, TASK_TYPE, TIMEOUT, cluster_url, demo_meta, register_demo
from helpers.db import SELECTED, make_db_url

from dxf_celery import handle
from dxf_celery.errors import DXFError
from dxf_celery.proto import TaskState
from dxf_celery.storage import TaskManager
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture

STEPS, SUBTASKS, TASKS = 2, 4, 2


def _node_ids(tm: TaskManager) -> set[str]:
    return {n.id for n in tm.get_all_nodes()}


#: These tests need a server database; they run unless DXF_TEST_DATABASES leaves PostgreSQL out.
needs_postgresql = pytest.mark.skipif("postgresql" not in SELECTED, reason="DXF_TEST_DATABASES leaves out PostgreSQL")


@pytest.fixture
def pg_url(tmp_path: Path) -> str:
    return make_db_url("postgresql", tmp_path)


def test_clusters_one_after_the_other_share_no_node(cluster_url: str) -> None:
    tm = TaskManager(cluster_url)
    try:
        with LocalCluster(cluster_url, nodes=2) as first:
            one = first.submit_task("first", TASK_TYPE, meta=demo_meta(steps=1, subtasks=SUBTASKS))
            assert first.wait_task(one.id, timeout=TIMEOUT).state == TaskState.SUCCEED
            first_nodes = set(first.node_ids)
            assert _node_ids(tm) == first_nodes
        assert _node_ids(tm) == set()
        with LocalCluster(cluster_url, nodes=1) as second:
            (node,) = second.node_ids
            assert node not in first_nodes and second.name != first.name
            assert _node_ids(tm) == {node}  # no ghost of the first cluster to plan onto
            two = second.submit_task("second", TASK_TYPE, meta=demo_meta(steps=2, subtasks=6))
            assert second.wait_task(two.id, timeout=TIMEOUT).state == TaskState.SUCCEED
            assert {s.exec_id for s in second.get_subtasks(two.id)} == {node}
            runs = RECORDER.runs_of(two.id)
            assert {r.exec_id for r in runs} == {node}
            expected = Counter({(step, ordinal): 1 for step in (1, 2) for ordinal in range(1, 7)})
            assert Counter((r.step, r.ordinal) for r in runs) == expected
        assert _node_ids(tm) == set()
    finally:
        tm.dispose()


def test_a_failed_test_body_still_deletes_every_node(cluster_url: str) -> None:
    tm = TaskManager(cluster_url)
    try:
        with pytest.raises(RuntimeError, match="the test failed"), LocalCluster(cluster_url, nodes=2) as cluster:
            stopped = cluster.node_ids[0]
            cluster.stop_node(stopped)  # no heartbeat any more, but its row stays until the TTL
            assert stopped in _node_ids(tm) and len(_node_ids(tm)) == 2
            raise RuntimeError("the test failed")
        assert _node_ids(tm) == set()
        cluster.stop()  # again: nothing left to do
    finally:
        tm.dispose()


@needs_postgresql
def test_a_failed_start_deletes_the_nodes_it_registered(pg_url: str) -> None:
    """The second node's role is longer than the column allows, which PostgreSQL refuses."""
    tm = TaskManager(pg_url)
    try:
        cluster = LocalCluster(pg_url, nodes=2, roles=["", "r" * 65])
        with pytest.raises(DXFError):
            cluster.start()
        assert cluster.node_ids == [] and cluster.schedulers == []
        assert _node_ids(tm) == set()
    finally:
        tm.dispose()


# ---------------------------------------------------------------------- two clusters at once


def cluster_process(url: str, index: int, isolated: bool, barrier: Any, results: Any) -> None:
    """Child body: a cluster that submits its own tasks while the other cluster runs too."""
    register_demo()
    with LocalCluster(url, nodes=2, slots=2, check_interval=0.02, isolated=isolated) as cluster:
        barrier.wait(TIMEOUT)  # both clusters' nodes are registered before either submits
        tasks = [
            cluster.submit_task(
                f"c{index}-{i}",
                TASK_TYPE,
                meta=demo_meta(steps=STEPS, subtasks=SUBTASKS),
                target_scope=cluster.scope,
            )
            for i in range(TASKS)
        ]
        states = [cluster.wait_task(t.id, timeout=TIMEOUT).state.value for t in tasks]
        barrier.wait(TIMEOUT)  # neither stops (deleting its nodes) before both are done
        with RECORDER.lock:
            runs = [(r.task_id, r.step, r.ordinal, r.exec_id) for r in RECORDER.runs]
        results.put(
            {
                "nodes": cluster.node_ids,
                "scope": cluster.scope,
                "tasks": [t.id for t in tasks],
                "states": states,
                "runs": runs,
            }
        )


def _run_two_clusters(url: str, isolated: bool) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=cluster_process, args=(url, i, isolated, barrier, results)) for i in range(2)]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=3 * TIMEOUT) for _ in procs]
    finally:
        for p in procs:
            p.join(TIMEOUT)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    return out


@needs_postgresql
def test_two_isolated_clusters_at_once_share_no_node_or_subtask(pg_url: str) -> None:
    a, b = _run_two_clusters(pg_url, isolated=True)
    assert not set(a["nodes"]) & set(b["nodes"]) and a["scope"] != b["scope"]
    tm = TaskManager(pg_url)
    try:
        for mine in (a, b):
            assert mine["states"] == ["succeed"] * TASKS
            nodes, tasks = set(mine["nodes"]), set(mine["tasks"])
            # Every subtask this process's nodes ran belongs to its own tasks, and ran once ...
            assert {task for task, *_ in mine["runs"]} == tasks
            assert {exec_id for *_, exec_id in mine["runs"]} <= nodes
            ran = Counter((task, step, ordinal) for task, step, ordinal, _ in mine["runs"])
            assert sorted(ran.values()) == [1] * (TASKS * STEPS * SUBTASKS)
            # ... and the database agrees: its tasks' subtasks ended on its nodes only.
            for task_id in tasks:
                subtasks = handle.get_subtasks(tm, task_id)
                assert len(subtasks) == STEPS * SUBTASKS
                assert {s.exec_id for s in subtasks} <= nodes
        assert _node_ids(tm) == set()  # both stopped: no node row left
    finally:
        tm.dispose()


@needs_postgresql
def test_two_plain_clusters_at_once_are_one_cluster(pg_url: str) -> None:
    """Without ``isolated`` the schedulers plan onto every live node: the documented contrast."""
    a, b = _run_two_clusters(pg_url, isolated=False)
    assert not set(a["nodes"]) & set(b["nodes"])  # still distinct names
    crossed = [run for mine, other in ((a, b), (b, a)) for run in mine["runs"] if run[0] in other["tasks"]]
    assert crossed, "no subtask of one cluster ran on the other's nodes"
    tm = TaskManager(pg_url)
    try:
        assert _node_ids(tm) == set()
    finally:
        tm.dispose()
