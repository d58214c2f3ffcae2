"""End to end on a LocalCluster: tasks no node can run and garbage planners do not hold the
slots a normal task needs (2 nodes x 2 slots, as in issue 9's measurements)."""

from __future__ import annotations

from collections.abc import Sequence

from helpers.cluster_types import TASK_TYPE, TIMEOUT, cluster_url, demo_meta

from dxf_celery import handle
from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, STEP_INIT, Task, TaskBase, TaskState
from dxf_celery.scheduler import BaseScheduler, Extension, TaskHandle, register_scheduler_factory
from dxf_celery.testing import LocalCluster

__all__ = ["cluster_url"]  # the fixture


def test_sixty_tasks_of_a_missing_scope_do_not_delay_a_normal_task(cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2, slots=2) as cluster:
        lost = [
            cluster.submit_task(f"lost{i}", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1), target_scope="nowhere")
            for i in range(60)
        ]
        normal = cluster.submit_task("normal", TASK_TYPE, meta=demo_meta(steps=2, subtasks=4), concurrency=2)
        assert cluster.wait_task(normal.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        tm = cluster.task_manager
        assert {cluster.get_task(t.id).state for t in lost} == {TaskState.PENDING}
        assert cluster.get_subtasks(lost[0].id) == []  # nothing planned, nothing held
        reason = handle.waiting_reason(tm, cluster.get_task(lost[0].id))
        assert reason is not None and "'nowhere'" in reason


class _NonePlanner(Extension):
    def get_next_step(self, task: TaskBase) -> int:
        return 1 if task.step == STEP_INIT else STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return None  # type: ignore[return-value]


def test_garbage_planners_revert_and_a_normal_task_succeeds(cluster_url: str) -> None:
    register_scheduler_factory("none-planner", lambda ctx, task, param: BaseScheduler(ctx, task, param, _NonePlanner()))
    with LocalCluster(cluster_url, nodes=2, slots=2) as cluster:
        bad = [cluster.submit_task(f"bad{i}", "none-planner") for i in range(20)]
        normal = cluster.submit_task("normal", TASK_TYPE, meta=demo_meta(steps=1, subtasks=2))
        assert cluster.wait_task(normal.id, timeout=TIMEOUT).state == TaskState.SUCCEED
        for t in bad:
            done = cluster.wait_task(t.id, timeout=TIMEOUT, raise_error=False)
            assert done.state == TaskState.REVERTED
            assert done.error is not None and done.error.type_name == "InvalidPlanError"
            assert "returned NoneType None" in done.error.message
