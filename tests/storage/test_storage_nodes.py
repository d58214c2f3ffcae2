"""TaskManager: node meta (registration, heartbeat, dead nodes, CPU count) and leases.

Every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from datetime import timedelta

from helpers.storage import running_task
from sqlalchemy import update

from dxf_celery.storage import TaskManager, utcnow
from dxf_celery.storage.tables import lease_table, node_table


def _age_node(tm: TaskManager, host: str, seconds: float) -> None:
    with tm.write_engine.begin() as conn:
        conn.execute(
            update(node_table).where(node_table.c.host == host).values(heartbeat=utcnow() - timedelta(seconds=seconds))
        )


def test_init_meta_inserts_and_updates_role(task_manager: TaskManager) -> None:
    task_manager.init_meta("celery@a", "background", cpu_count=4)
    (node,) = task_manager.get_all_nodes()
    assert (node.id, node.role, node.cpu_count) == ("celery@a", "background", 4)
    assert node.heartbeat is not None
    task_manager.init_meta("celery@a", "", cpu_count=8)
    (node,) = task_manager.get_all_nodes()
    assert (node.role, node.cpu_count) == ("", 8)


def test_init_meta_defaults_cpu_count(task_manager: TaskManager) -> None:
    task_manager.init_meta("celery@a")
    (node,) = task_manager.get_all_nodes()
    assert node.cpu_count >= 1 and node.role == ""


def test_recover_meta_keeps_role_and_reinserts(task_manager: TaskManager) -> None:
    task_manager.init_meta("celery@a", "background", cpu_count=4)
    task_manager.recover_meta("celery@a", "other", cpu_count=4)
    assert task_manager.get_all_nodes()[0].role == "background"
    assert task_manager.delete_node("celery@a") is True
    assert task_manager.delete_node("celery@a") is False
    task_manager.recover_meta("celery@a", "other", cpu_count=6)
    (node,) = task_manager.get_all_nodes()
    assert (node.role, node.cpu_count) == ("other", 6)


def test_heartbeat_and_dead_nodes(task_manager: TaskManager) -> None:
    for host in ("celery@a", "celery@b", "celery@c"):
        task_manager.init_meta(host, "", cpu_count=2)
    _age_node(task_manager, "celery@a", 120)
    _age_node(task_manager, "celery@b", 120)
    assert task_manager.get_dead_nodes(60) == ["celery@a", "celery@b"]
    assert task_manager.heartbeat("celery@b") is True
    assert task_manager.get_dead_nodes(60) == ["celery@a"]
    assert task_manager.get_dead_nodes(3600) == []
    assert task_manager.delete_dead_nodes(task_manager.get_dead_nodes(60)) == 1
    assert [n.id for n in task_manager.get_all_nodes()] == ["celery@b", "celery@c"]
    assert task_manager.heartbeat("celery@a") is False  # gone: the node must re-register
    assert task_manager.delete_dead_nodes([]) == 0


def test_get_cpu_count_of_node(task_manager: TaskManager) -> None:
    assert task_manager.get_cpu_count_of_node() is None
    task_manager.init_meta("celery@b", "background", cpu_count=16)
    task_manager.init_meta("celery@a", "", cpu_count=0)  # 0 = unknown, ignored
    assert task_manager.get_cpu_count_of_node() == 16
    task_manager.init_meta("celery@c", "", cpu_count=4)
    assert task_manager.get_cpu_count_of_node() == 16  # first by host with a CPU count
    assert task_manager.get_cpu_count_of_node("") == 4
    assert task_manager.get_cpu_count_of_node("nobody") is None


def test_busy_nodes_follow_subtasks(task_manager: TaskManager) -> None:
    task_manager.init_meta("n1", "", cpu_count=4)
    task_manager.init_meta("n2", "", cpu_count=4)
    running_task(task_manager, exec_ids=["n2"], n=1)
    assert task_manager.get_busy_nodes() == ["n2"]


# ---------------------------------------------------------------- leases


def test_lease_acquire_extend_release(task_manager: TaskManager) -> None:
    assert task_manager.get_lease_owner("scheduler") is None
    assert task_manager.try_acquire_lease("scheduler", "a", 30) is True
    assert task_manager.get_lease_owner("scheduler") == "a"
    assert task_manager.try_acquire_lease("scheduler", "b", 30) is False
    assert task_manager.try_acquire_lease("scheduler", "a", 60) is True  # extend
    assert task_manager.try_acquire_lease("other", "b", 30) is True  # leases are independent
    task_manager.release_lease("scheduler", "b")  # not the owner: no-op
    assert task_manager.get_lease_owner("scheduler") == "a"
    task_manager.release_lease("scheduler", "a")
    assert task_manager.get_lease_owner("scheduler") is None
    assert task_manager.try_acquire_lease("scheduler", "b", 30) is True


def test_lease_stolen_after_expiry(task_manager: TaskManager) -> None:
    assert task_manager.try_acquire_lease("scheduler", "a", 30)
    with task_manager.write_engine.begin() as conn:
        conn.execute(update(lease_table).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert task_manager.get_lease_owner("scheduler") is None
    assert task_manager.try_acquire_lease("scheduler", "b", 30) is True
    assert task_manager.get_lease_owner("scheduler") == "b"
    assert task_manager.try_acquire_lease("scheduler", "a", 30) is False
