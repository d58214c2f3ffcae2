"""End to end: modifying pending, running and paused tasks; priority, target scope, node limits."""

from __future__ import annotations

import json
from collections import Counter

from helpers.cluster_types import RECORDER, TASK_TYPE, TIMEOUT, cluster_url, demo_meta
from helpers.waiting import wait_until

from dxf_celery.proto import Modification, ModificationType, SubtaskState, TaskState
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture

BATCH = [Modification(ModificationType.BATCH_SIZE.value, 500)]


def test_modify_pending_task(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=0, slots=8) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=6), concurrency=2)
        cluster.modify_task(task.id, concurrency=3, max_node_count=2, modifications=BATCH)
        wait_until(lambda: cluster.get_task(task.id).state == TaskState.PENDING, what="modification applied")
        t = cluster.get_task(task.id)
        assert (t.concurrency, t.max_node_count, json.loads(t.meta)["modify_batch_size"]) == (3, 2, 500)
        for _ in range(3):
            cluster.add_node()
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        subs = cluster.get_subtasks(task.id)
        assert {s.concurrency for s in subs} == {3}
        assert len({s.exec_id for s in subs}) == 2


def test_modify_running_task(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=3, slots=8) as cluster:
        task = cluster.submit_task(
            "k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=6, block=True, block_step=1), concurrency=2
        )
        wait_until(lambda: RECORDER.running_of(task.id) == 3, what="subtasks running on the 3 nodes")
        cluster.modify_task(task.id, concurrency=4, max_node_count=2, modifications=BATCH)
        wait_until(lambda: cluster.get_task(task.id).state == TaskState.RUNNING, what="back to running")
        t = cluster.get_task(task.id)
        assert (t.concurrency, t.max_node_count, json.loads(t.meta)["modify_batch_size"]) == (4, 2, 500)
        active = cluster.task_manager.get_active_subtasks(task.id)
        assert {s.concurrency for s in active} == {4}

        # The balancer trims the task to 2 nodes: the pending subtasks leave the cut node at
        # once; its running one (blocked here) stays and finishes there, never abandoned.
        def pending_nodes() -> set[str]:
            active = cluster.task_manager.get_active_subtasks(task.id)
            return {s.exec_id for s in active if s.state == SubtaskState.PENDING}

        wait_until(lambda: len(pending_nodes()) <= 2, what="pending subtasks on at most 2 nodes")
        running = {s.id: s.exec_id for s in active if s.state == SubtaskState.RUNNING}
        assert len(running) == 3
        now = cluster.task_manager.get_active_subtasks(task.id)
        assert {s.id: s.exec_id for s in now if s.state == SubtaskState.RUNNING} == running
        RECORDER.release()
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        step2 = cluster.get_subtasks(task.id, 2)
        assert {s.concurrency for s in step2} == {4} and len({s.exec_id for s in step2}) == 2
        assert {s.state for s in cluster.get_subtasks(task.id)} == {SubtaskState.SUCCEED}


def test_modify_paused_task(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2, slots=8) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=1, subtasks=4, block=True), concurrency=2)
        wait_until(lambda: RECORDER.running_of(task.id) == 2, what="subtasks running")
        cluster.pause_task("k")
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.PAUSED
        cluster.modify_task(task.id, concurrency=5, modifications=BATCH)
        wait_until(lambda: cluster.get_task(task.id).state == TaskState.PAUSED, what="back to paused")
        t = cluster.get_task(task.id)
        assert (t.concurrency, json.loads(t.meta)["modify_batch_size"]) == (5, 500)
        assert {s.concurrency for s in cluster.get_subtasks(task.id)} == {5}
        RECORDER.release()
        cluster.resume_task("k")
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED


def test_higher_priority_task_preempts(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=1, slots=4) as cluster:
        low = cluster.submit_task(
            "low", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2, block=True), concurrency=4, priority=800
        )
        wait_until(lambda: RECORDER.running_of(low.id) == 1, what="low running")
        high = cluster.submit_task("high", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2), concurrency=4, priority=1)
        # The node has room for one of them: the high one takes it while the low one is still blocked.
        assert cluster.wait_task(high.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert cluster.get_task(low.id).state == TaskState.RUNNING
        RECORDER.release()
        assert cluster.wait_task(low.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        # The low task's first subtask was interrupted by the preemption and ran again later.
        assert Counter((r.step, r.ordinal) for r in RECORDER.runs_of(low.id))[(1, 1)] >= 2
        assert {s.state for s in cluster.get_subtasks(low.id)} == {SubtaskState.SUCCEED}


def test_higher_priority_task_gets_slots_first(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=0, slots=4) as cluster:
        low = cluster.submit_task("low", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=4, priority=900)
        high = cluster.submit_task("high", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), concurrency=4, priority=2)
        cluster.add_node()
        assert cluster.wait_task(low.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert cluster.wait_task(high.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        first = next(r.task_id for r in RECORDER.runs)
        assert first == high.id


def test_target_scope_and_max_node_count(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=4, roles=["", "", "gpu", "gpu"]) as cluster:
        gpu_nodes = set(cluster.node_ids[2:])
        scoped = cluster.submit_task("g", TASK_TYPE, meta=demo_meta(steps=2, subtasks=6), target_scope="gpu")
        limited = cluster.submit_task("m", TASK_TYPE, meta=demo_meta(steps=2, subtasks=6), max_node_count=1)
        assert cluster.wait_task(scoped.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert cluster.wait_task(limited.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert {r.exec_id for r in RECORDER.runs_of(scoped.id)} == gpu_nodes
        per_step = Counter((r.step, r.exec_id) for r in RECORDER.runs_of(limited.id))
        assert sorted(per_step.values()) == [6, 6]  # each step on one node only
        assert not {r.exec_id for r in RECORDER.runs_of(limited.id)} & gpu_nodes


def test_progress_is_reported(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=3))
        cluster.wait_task(task.id, timeout=TIMEOUT)
        progress = cluster.get_task_progress(task.id)
        assert {step: p.counts for step, p in progress.steps.items()} == {
            1: {SubtaskState.SUCCEED: 3},
            2: {SubtaskState.SUCCEED: 3},
        }
