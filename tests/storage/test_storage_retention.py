"""History retention: purge_history deletes finished tasks past the cutoff with their subtasks, nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers.waiting import wait_until

from dxf_celery.examples import noop
from dxf_celery.proto import TaskState
from dxf_celery.storage import TaskManager, utcnow
from dxf_celery.storage.retention import PurgeResult, purge_history
from dxf_celery.testing import LocalCluster


def _history_counts(tm: TaskManager, task_ids: list[int]) -> tuple[int, int]:
    tasks = [t for t in tm.list_tasks() if t.id in task_ids and t.state == TaskState.SUCCEED]
    subtasks = sum(len(tm.get_subtasks(i)) for i in task_ids)
    return len(tasks), subtasks


def test_purge_deletes_old_history_only(db_url: str) -> None:
    noop.register()
    with LocalCluster(db_url, nodes=1, slots=2, check_interval=0.02) as cluster:
        ids = [cluster.submit_task(f"ret-{i}", noop.TASK_TYPE, meta=noop.noop_meta(subtasks=3)).id for i in range(3)]
        for task_id in ids:
            cluster.wait_task(task_id, timeout=60)
        tm = cluster.task_manager

        def all_in_history() -> bool:
            return not [t for t in tm.get_all_tasks() if t.id in ids]

        wait_until(all_in_history, what="the finished tasks to move to history")
    tm = TaskManager(db_url)
    try:
        live = tm.create_task("ret-live", noop.TASK_TYPE, 1)  # a pending task: never purged
        assert _history_counts(tm, ids) == (3, 9)
        # Finished just now: a one-day retention keeps them.
        assert purge_history(tm, timedelta(days=1)) == PurgeResult(0, 0)
        assert _history_counts(tm, ids) == (3, 9)
        # Two days later, with a small batch so several transactions run.
        result = purge_history(tm, timedelta(days=1), batch=2, now=utcnow() + timedelta(days=2))
        assert (result.tasks, result.subtasks) == (3, 9)
        assert _history_counts(tm, ids) == (0, 0)
        assert tm.get_task_by_id(live).state == TaskState.PENDING
        with pytest.raises(ValueError, match="older_than"):
            purge_history(tm, timedelta(days=-1))
    finally:
        tm.dispose()
