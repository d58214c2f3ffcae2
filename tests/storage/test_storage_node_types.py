"""The task types each node reports in ``dxf_node.task_types`` (revision 0002), on every database.

A node records the types its process registered when it registers (``init_meta``) and on each
``recover_meta``; NULL means unknown (a node of an older version), which is not the same as a
node that registered none.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text, update

from dxf_celery.storage import TaskManager
from dxf_celery.storage.tables import node_table


def _types(tm: TaskManager, host: str) -> tuple[str, ...] | None:
    (node,) = [n for n in tm.get_all_nodes() if n.id == host]
    return node.task_types


def test_init_meta_records_the_types_sorted_and_once(task_manager: TaskManager) -> None:
    task_manager.init_meta("celery@a", "", cpu_count=4, task_types=["noop", "csv_import", "noop"])
    assert _types(task_manager, "celery@a") == ("csv_import", "noop")
    task_manager.init_meta("celery@b", "", cpu_count=4, task_types=[])
    assert _types(task_manager, "celery@b") == ()  # registered none: known, and empty
    task_manager.init_meta("celery@c", "", cpu_count=4)
    assert _types(task_manager, "celery@c") is None  # not said: unknown


def test_reregistering_and_recover_meta_replace_the_types(task_manager: TaskManager) -> None:
    task_manager.init_meta("celery@a", "gpu", cpu_count=4, task_types=["a"])
    task_manager.recover_meta("celery@a", "", cpu_count=4, task_types=["a", "b"])  # a type registered later
    assert _types(task_manager, "celery@a") == ("a", "b")
    assert task_manager.get_all_nodes()[0].role == "gpu"  # recover_meta still keeps the role
    task_manager.init_meta("celery@a", "gpu", cpu_count=4, task_types=["c"])  # a restart with other imports
    assert _types(task_manager, "celery@a") == ("c",)
    assert task_manager.delete_node("celery@a")
    task_manager.recover_meta("celery@a", "gpu", cpu_count=4, task_types=["d"])  # re-inserted after removal
    assert _types(task_manager, "celery@a") == ("d",)


def test_many_long_type_names_fit(task_manager: TaskManager) -> None:
    """The column is not a 64 KiB TEXT on MariaDB: a worker with many types still registers."""
    many = [f"{i:03d}" + "t" * 250 for i in range(300)]  # ~76 KB of JSON
    task_manager.init_meta("celery@a", "", cpu_count=4, task_types=many)
    assert _types(task_manager, "celery@a") == tuple(many)


@pytest.mark.parametrize("stored", ["not json", '{"a": 1}', "[1, 2]", '"noop"'])
def test_an_unreadable_column_counts_as_unknown(task_manager: TaskManager, stored: str) -> None:
    task_manager.init_meta("celery@a", "", cpu_count=4, task_types=["noop"])
    with task_manager.write_engine.begin() as conn:
        conn.execute(update(node_table).where(node_table.c.host == "celery@a").values(task_types=stored))
    assert _types(task_manager, "celery@a") is None


def test_a_row_written_without_the_column_is_unknown(task_manager: TaskManager) -> None:
    """What an older node's INSERT (it names only 0001's columns) leaves behind."""
    with task_manager.write_engine.begin() as conn:
        conn.execute(text("INSERT INTO dxf_node (host, role, cpu_count) VALUES ('old@host', '', 2)"))
    assert _types(task_manager, "old@host") is None
