"""Node Managers on real storage: exactly-once runs, slot capacity, preemption, backfilling."""

from __future__ import annotations

from collections import Counter

from helpers.executor import Cluster, TestType, max_overlap, plan_task, states, step_done, switch_step
from helpers.waiting import wait_until

from dxf_celery.proto import SubtaskState, TaskState


def test_multi_step_task_runs_every_subtask_exactly_once(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("multi")
    tt.register()
    nodes = ["n1", "n2", "n3"]
    for n in nodes:
        cluster.add(n, slots=2)
    task_id = plan_task(tm, "multi-1", "multi", nodes * 3, step=1, concurrency=2)
    for next_step in (2, 3):
        wait_until(lambda s=next_step - 1: step_done(tm, task_id, s), what=f"step {next_step - 1}")
        switch_step(tm, task_id, next_step, nodes * 2)
    wait_until(lambda: step_done(tm, task_id, 3), what="step 3")
    assert tm.succeed(task_id)

    subtasks = tm.get_subtasks(task_id)
    assert len(subtasks) == 9 + 6 + 6
    assert all(s.state == SubtaskState.SUCCEED for s in subtasks)
    # meta rewritten by run_subtask is persisted
    assert all(s.meta == f"done-{s.id}".encode() for s in subtasks)
    ok = Counter(r.subtask_id for r in tt.rec.ok_runs())
    assert ok == Counter({s.id: 1 for s in subtasks})
    # each subtask ran on the node that owned it
    owner = {s.id: s.exec_id for s in subtasks}
    assert all(r.exec_id == owner[r.subtask_id] for r in tt.rec.ok_runs())
    # one step executor per step per node: init before cleanup, steps in order
    for n in nodes:
        wait_until(lambda n=n: cluster.managers[n].running_task_ids() == [], what="executors exit")
    for step in ("1", "2", "3"):
        inits = [e for e in tt.rec.events if e[0] == "init" and e[2] == step]
        cleanups = [e for e in tt.rec.events if e[0] == "cleanup" and e[2] == step]
        assert len(inits) == len(cleanups) >= 3


def test_slot_capacity_is_never_exceeded(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("cap")

    def short_work(ctx, st):  # type: ignore[no-untyped-def]
        ctx.wait(0.01)

    tt.behaviour = short_work
    tt.register()
    mgr = cluster.add("n1", slots=3)
    task_ids = [plan_task(tm, f"cap-{i}", "cap", ["n1"] * 3, concurrency=1 + i % 3, priority=500 + i) for i in range(6)]
    for tid in task_ids:
        wait_until(lambda tid=tid: step_done(tm, tid, 1), what=f"task {tid}", timeout=60)
        tm.succeed(tid)
    wait_until(lambda: mgr.running_task_ids() == [], what="executors exit")
    spans = tt.rec.spans
    assert {s[1] for s in spans} == set(task_ids)
    assert 1 <= max_overlap(spans, "n1") <= 3
    assert mgr.slot_manager.used_slots() == 0


def test_higher_priority_task_preempts_lower_ranked_executor(cluster: Cluster) -> None:
    tm = cluster.tm
    low, high = TestType("low"), TestType("high")
    for tt in (low, high):
        tt.block_on_ctx()
        tt.register()
    mgr = cluster.add("n1", slots=4)
    low_id = plan_task(tm, "low", "low", ["n1"], concurrency=3, priority=600)
    wait_until(lambda: low.rec.runs, what="low task running")
    (low_sub,) = tm.get_subtasks(low_id)

    high_id = plan_task(tm, "high", "high", ["n1"], concurrency=2, priority=100)
    wait_until(lambda: high.rec.runs, what="high task running")
    # the low task's executor was cancelled; its row is left running for a later re-run
    assert low.rec.runs[0].outcome == "cancelled"
    assert low.rec.runs[0].cause != "CancelSubtaskError"
    assert tm.get_subtask(low_sub.id).state == SubtaskState.RUNNING
    assert mgr.running_task_ids() == [high_id]
    assert max_overlap(low.rec.spans + high.rec.spans, "n1") <= 4

    high.release(1)
    wait_until(lambda: step_done(tm, high_id, 1), what="high done")
    tm.succeed(high_id)
    low.release(1)
    wait_until(lambda: step_done(tm, low_id, 1), what="low re-run after preemption")
    assert [r.outcome for r in low.rec.runs_of(low_sub.id)] == ["cancelled", "ok"]


def test_small_lower_ranked_task_backfills_when_a_bigger_one_cannot_fit(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("fill")
    tt.block_on_ctx()
    tt.register()
    mgr = cluster.add("n1", slots=4)
    big = plan_task(tm, "big", "fill", ["n1"], concurrency=3, priority=10)
    wait_until(lambda: mgr.running_task_ids() == [big], what="big running")
    blocked = plan_task(tm, "blocked", "fill", ["n1"], concurrency=2, priority=20)
    small = plan_task(tm, "small", "fill", ["n1"], concurrency=1, priority=30)
    wait_until(lambda: sorted(mgr.running_task_ids()) == sorted([big, small]), what="small backfills")
    # the mid-ranked task cannot fit and may not preempt the higher-ranked one
    assert states(tm, blocked) == [SubtaskState.PENDING]
    assert mgr.slot_manager.used_slots() == 4

    # opening every gate lets all three finish; the blocked one starts once slots free up
    for i in (1,):
        tt.release(i)
    for tid in (big, small, blocked):
        wait_until(lambda tid=tid: step_done(tm, tid, 1), what=f"task {tid}")
    assert max_overlap(tt.rec.spans, "n1") <= 4


def test_manager_cancel_leaves_rows_untouched_and_stop_waits(cluster: Cluster) -> None:
    tm = cluster.tm
    tt = TestType("shutdown")
    tt.block_on_ctx()
    tt.register()
    mgr = cluster.add("n1", slots=2)
    task_id = plan_task(tm, "sd", "shutdown", ["n1", "n1"])
    wait_until(lambda: tt.rec.runs, what="subtask running")
    mgr.stop(timeout=30)
    assert mgr.running_task_ids() == []
    assert mgr.slot_manager.used_slots() == 0
    assert states(tm, task_id) == [SubtaskState.RUNNING, SubtaskState.PENDING]
    assert tt.rec.runs[0].outcome == "cancelled"
    assert tm.get_task_by_id(task_id).state == TaskState.RUNNING


def test_manager_heartbeats_and_recovers_its_node_row(cluster: Cluster) -> None:
    tm = cluster.tm
    cluster.add("n1")
    first = wait_until(lambda: [n for n in tm.get_all_nodes() if n.id == "n1"], what="node row")
    assert first[0].cpu_count == 4
    wait_until(
        lambda: [n for n in tm.get_all_nodes() if n.id == "n1" and n.heartbeat != first[0].heartbeat],
        what="heartbeat advances",
    )
    assert tm.delete_node("n1")  # the scheduler thought we were dead
    wait_until(lambda: [n for n in tm.get_all_nodes() if n.id == "n1"], what="row recovered")
