"""End to end: nodes that die or join, and scheduler owners that overlap or change mid-task."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers.cluster_types import RECORDER, TASK_TYPE, TIMEOUT, cluster_url, demo_meta
from helpers.waiting import wait_until

from dxf_celery.proto import SubtaskState, TaskState
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture


def _succeeded_once(cluster: LocalCluster, task_id: int, steps: int, n: int) -> None:
    """Every planned (step, ordinal) exists exactly once and succeeded."""
    subs = cluster.get_subtasks(task_id)
    assert sorted((s.step, s.ordinal) for s in subs) == [(st, o) for st in range(1, steps + 1) for o in range(1, n + 1)]
    assert {s.state for s in subs} == {SubtaskState.SUCCEED}


@pytest.mark.parametrize("step", [1, 2])
def test_node_stops_mid_step(cluster_url: str, step: int) -> None:
    with LocalCluster(cluster_url, nodes=3, node_ttl=1.0) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=6, block=True, block_step=step))
        wait_until(lambda: RECORDER.running_of(task.id) == 3, what="a subtask running on every node")
        victim = cluster.node_ids[0]
        cluster.stop_node(victim)
        # The scheduler deletes the silent node and the balancer moves all its subtasks.
        wait_until(lambda: victim not in {n.id for n in cluster.task_manager.get_all_nodes()}, what="node deleted")
        wait_until(
            lambda: all(s.exec_id != victim for s in cluster.task_manager.get_active_subtasks(task.id)),
            what="subtasks moved off the dead node",
        )
        RECORDER.release()
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        _succeeded_once(cluster, task.id, 2, 6)
        assert {s.exec_id for s in cluster.get_subtasks(task.id, step)} <= set(cluster.node_ids)
        runs = Counter((r.step, r.ordinal) for r in RECORDER.runs_of(task.id))
        assert set(runs) == {(s, o) for s in (1, 2) for o in range(1, 7)}
        # Only the subtask interrupted on the dead node ran twice (it is idempotent).
        assert sum(runs.values()) - len(runs) <= 1


def test_new_node_gets_pending_subtasks(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=1) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6, block=True))
        wait_until(lambda: RECORDER.running_of(task.id) == 1, what="first subtask running")
        added = [cluster.add_node(), cluster.add_node()]
        wait_until(lambda: RECORDER.running_of(task.id) == 3, what="the new nodes running subtasks")
        RECORDER.release()
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        _succeeded_once(cluster, task.id, 1, 6)
        ran_on = Counter(r.exec_id for r in RECORDER.runs_of(task.id))
        assert set(added) <= set(ran_on)
        assert sum(ran_on.values()) == 6


def test_two_scheduler_owners_at_once(cluster_url: str) -> None:
    """Split brain: a second scheduler with the same owner id holds the lease at the same time."""
    with LocalCluster(cluster_url, nodes=3) as cluster:
        owner = cluster.schedulers[0].owner_id
        cluster.add_scheduler(owner)
        cluster.add_scheduler(owner)
        tasks = [cluster.submit_task(f"k{i}", TASK_TYPE, meta=demo_meta(steps=3, subtasks=5)) for i in range(3)]
        for t in tasks:
            assert cluster.wait_task(t.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        for t in tasks:
            _succeeded_once(cluster, t.id, 3, 5)
            runs = Counter((r.step, r.ordinal) for r in RECORDER.runs_of(t.id))
            assert runs == Counter({(s, o): 1 for s in (1, 2, 3) for o in range(1, 6)})


def test_scheduler_owner_changes_mid_task(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        schedulers = [cluster.schedulers[0], cluster.add_scheduler("standby")]
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=3, subtasks=4, block=True, block_step=2))
        wait_until(lambda: RECORDER.running_of(task.id) == 2, what="step 2 running")
        # Either may have won the lease at start: the holder schedules the task, the other waits.
        holder = cluster.task_manager.get_lease_owner("scheduler")
        owner, standby = sorted(schedulers, key=lambda s: s.owner_id != holder)
        assert owner.owner_id == holder
        wait_until(lambda: owner.scheduled_task_ids() == [task.id], what="the lease holder schedules the task")
        assert standby.scheduled_task_ids() == []
        cluster.stop_scheduler(owner)  # releases the lease: the standby takes over
        wait_until(lambda: standby.scheduled_task_ids() == [task.id], what="standby took the task")
        RECORDER.release()
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        _succeeded_once(cluster, task.id, 3, 4)
        assert Counter((r.step, r.ordinal) for r in RECORDER.runs_of(task.id)) == Counter(
            {(s, o): 1 for s in (1, 2, 3) for o in range(1, 5)}
        )
