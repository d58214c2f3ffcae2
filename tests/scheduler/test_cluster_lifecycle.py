"""End to end on a LocalCluster (real node Managers + scheduler threads, SQLite and PostgreSQL):
success, failures, planning errors, manual recovery, cancel, pause/resume, history."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers.cluster_types import RECORDER, TASK_TYPE, TIMEOUT, cluster_url, demo_meta
from helpers.waiting import wait_until

from dxf_celery.errors import TaskAlreadyExistsError, TaskFailedError
from dxf_celery.proto import CANCELLED_BY_USER, ExtraParams, SubtaskState, TaskState
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture


def test_multi_step_tasks_succeed_each_subtask_once(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=3, slots=8) as cluster:
        tasks = [
            cluster.submit_task(f"k{i}", TASK_TYPE, meta=demo_meta(steps=3, subtasks=6), concurrency=2)
            for i in range(3)
        ]
        for t in tasks:
            done = cluster.wait_task(t.id, timeout=TIMEOUT)
            assert done.state == TaskState.SUCCEED
        for t in tasks:
            planned = [(step, n) for tid, step, n in RECORDER.plans if tid == t.id]
            assert planned == [(1, 6), (2, 6), (3, 6)]
            runs = Counter((r.step, r.ordinal) for r in RECORDER.runs_of(t.id))
            assert runs == Counter({(s, o): 1 for s in (1, 2, 3) for o in range(1, 7)})
            subs = cluster.get_subtasks(t.id)
            assert len(subs) == 18 and {s.state for s in subs} == {SubtaskState.SUCCEED}
            assert {s.exec_id for s in subs} == set(cluster.node_ids)  # spread over the 3 nodes
            assert json.loads(subs[0].meta)["done_by"] == subs[0].exec_id  # run_subtask's meta was saved
        assert sorted(tid for tid, _ in RECORDER.done) == sorted(t.id for t in tasks)
        # Finished tasks move to history; their keys stay taken.
        wait_until(lambda: cluster.task_manager.get_tasks_in_states(TaskState.SUCCEED) == [], what="history")
        assert cluster.get_task("k0").state == TaskState.SUCCEED
        with pytest.raises(TaskAlreadyExistsError):
            cluster.submit_task("k0", TASK_TYPE)


def test_failed_subtask_reverts_the_task(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=3) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=4, fail=[2, 3]))
        with pytest.raises(TaskFailedError, match="subtask 2/3 exploded") as info:
            cluster.wait_task(task.id, timeout=TIMEOUT)
        t = info.value.task
        assert t.state == TaskState.REVERTED and t.step == 2
        assert t.error is not None and t.error.type_name == "SubtaskBoom"
        assert RECORDER.done == [(task.id, "reverting")]
        assert not any(r.step == 3 for r in RECORDER.runs_of(task.id))


@pytest.mark.parametrize("step", [1, 2])
def test_planning_errors(cluster_url: str, step: int) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        retried = cluster.submit_task(
            "r", TASK_TYPE, meta=demo_meta(plan_error={"step": step, "times": 3, "retryable": True})
        )
        fatal = cluster.submit_task("f", TASK_TYPE, meta=demo_meta(plan_error={"step": step, "retryable": False}))
        assert cluster.wait_task(retried.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert RECORDER.plan_failures[(retried.id, step)] == 4
        with pytest.raises(TaskFailedError, match=f"planning step {step} failed"):
            cluster.wait_task(fatal.id, timeout=TIMEOUT)
        assert (fatal.id, "reverting") in RECORDER.done
        assert not any(r.step >= step for r in RECORDER.runs_of(fatal.id))


def test_manual_recovery(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        task = cluster.submit_task(
            "k",
            TASK_TYPE,
            meta=demo_meta(steps=2, subtasks=3, fail=[1, 2], fail_times=1),
            extra_params=ExtraParams(manual_recovery=True),
        )
        wait_until(lambda: cluster.get_task(task.id).state == TaskState.AWAITING_RESOLUTION, what="awaiting")
        assert "exploded" in str(cluster.get_task(task.id).error)
        assert cluster.resolve_task("k")
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        runs = Counter((r.step, r.ordinal) for r in RECORDER.runs_of(task.id))
        assert runs[(1, 2)] == 2 and runs[(2, 1)] == 1


def test_cancel_while_running(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(subtasks=4, block=True))
        wait_until(lambda: RECORDER.running_of(task.id) == 2, what="both nodes running a subtask")
        assert cluster.cancel_task("k")
        with pytest.raises(TaskFailedError) as info:
            cluster.wait_task(task.id, timeout=TIMEOUT)
        assert info.value.task.state == TaskState.REVERTED
        assert str(info.value.task.error) == CANCELLED_BY_USER
        assert RECORDER.running_of(task.id) == 0
        assert RECORDER.done == [(task.id, "reverting")]
        states = {s.state for s in cluster.get_subtasks(task.id)}
        assert states <= {SubtaskState.CANCELED}


def test_pause_while_running_then_resume(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=4, block=True, block_step=1))
        wait_until(lambda: RECORDER.running_of(task.id) == 2, what="subtasks running")
        assert cluster.pause_task("k")
        paused = cluster.wait_task(task.id, timeout=TIMEOUT)
        assert paused.state == TaskState.PAUSED
        assert RECORDER.running_of(task.id) == 0
        assert {s.state for s in cluster.get_subtasks(task.id, 1)} == {SubtaskState.PAUSED}
        RECORDER.release()
        assert cluster.resume_task("k")
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert {s.state for s in cluster.get_subtasks(task.id)} == {SubtaskState.SUCCEED}


def test_pause_while_pending_then_resume(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=0) as cluster:
        task = cluster.submit_task("k", TASK_TYPE, meta=demo_meta(steps=2, subtasks=2))
        assert cluster.pause_task("k")
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.PAUSED
        assert cluster.get_subtasks(task.id) == []
        cluster.add_node()
        assert cluster.resume_task("k")
        assert cluster.wait_task(task.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        assert Counter((r.step, r.ordinal) for r in RECORDER.runs_of(task.id)) == Counter(
            {(s, o): 1 for s in (1, 2) for o in (1, 2)}
        )


def test_unknown_type_fails(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=1) as cluster:
        task = cluster.submit_task("k", "nobody-knows-me")
        with pytest.raises(TaskFailedError, match="unknown task type"):
            cluster.wait_task(task.id, timeout=TIMEOUT)
        assert cluster.get_task("k").state == TaskState.FAILED
