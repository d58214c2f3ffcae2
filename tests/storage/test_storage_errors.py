"""Bad input and bad databases give a DXFError subclass that says what to do, never a raw
driver exception. Every case runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.db import SELECTED
from helpers.storage import empty_database_url, new_task
from sqlalchemy import exc as sa_exc

from dxf_celery.errors import (
    InvalidTaskError,
    StorageDataError,
    StorageSchemaError,
    StorageUnavailableError,
    TaskAlreadyExistsError,
    TaskNotFoundError,
)
from dxf_celery.proto import TaskState
from dxf_celery.storage import TaskManager, is_transient_error, safe_url

PASSWORD = "s3cr3t-Pw"


def test_duplicate_key_live(task_manager: TaskManager) -> None:
    new_task(task_manager, "dup")
    with pytest.raises(TaskAlreadyExistsError, match="dup"):
        task_manager.create_task("dup", "t", 1)


def test_duplicate_key_in_history(task_manager: TaskManager) -> None:
    task = new_task(task_manager, "dup")
    assert task_manager.request_cancel(task.id)
    with task_manager.write_engine.begin() as conn:
        from sqlalchemy import update

        from dxf_celery.storage.tables import task_table

        conn.execute(update(task_table).values(state=TaskState.REVERTED.value))
    assert task_manager.transfer_tasks_to_history([task_manager.get_task_by_id(task.id)]) == 1
    with pytest.raises(TaskAlreadyExistsError, match="history"):
        task_manager.create_task("dup", "t", 1)


def test_unknown_id(task_manager: TaskManager) -> None:
    with pytest.raises(TaskNotFoundError):
        task_manager.get_task_by_id(424242)
    with pytest.raises(TaskNotFoundError):
        task_manager.get_task_by_key_with_history("nope")


def test_concurrency_larger_than_node_cpus(task_manager: TaskManager) -> None:
    task_manager.init_meta("celery@a", "", cpu_count=2)
    with pytest.raises(InvalidTaskError, match=r"lower concurrency"):
        task_manager.create_task("k", "t", 3)


BAD_CREATE: list[tuple[str, dict[str, Any], str]] = [
    ("priority-0", {"priority": 0}, "out of range"),
    ("priority-1025", {"priority": 1025}, "out of range"),
    ("priority-str", {"priority": "5"}, "priority must be an int"),
    ("priority-float", {"priority": 5.0}, "priority must be an int"),
    ("priority-bool", {"priority": True}, "priority must be an int"),
    ("meta-str", {"meta": "{}"}, "meta must be bytes"),
    ("meta-dict", {"meta": {}}, "meta must be bytes"),
    ("meta-none", {"meta": None}, "meta must be bytes"),
    ("key-empty", {"key": ""}, "non-empty"),
    ("key-blank", {"key": " \t "}, "non-empty"),
    ("key-none", {"key": None}, "non-empty"),
    ("key-too-long", {"key": "k" * 257}, "limit is 256"),
    ("type-empty", {"task_type": ""}, "task type"),
    ("type-too-long", {"task_type": "t" * 300}, "limit is 256"),
    ("concurrency-0", {"concurrency": 0}, "concurrency must be"),
    ("concurrency-str", {"concurrency": "2"}, "concurrency must be"),
    ("max-node-count-negative", {"max_node_count": -1}, "max_node_count"),
    ("scope-too-long", {"target_scope": "s" * 300}, "target_scope"),
    ("extra-params-dict", {"extra_params": {"manual_recovery": True}}, "ExtraParams"),
]


@pytest.mark.parametrize(("overrides", "message"), [c[1:] for c in BAD_CREATE], ids=[c[0] for c in BAD_CREATE])
def test_create_task_bad_input(task_manager: TaskManager, overrides: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"key": "k", "task_type": "t", "concurrency": 1}
    args.update(overrides)
    with pytest.raises(InvalidTaskError, match=message):
        task_manager.create_task(**args)
    assert task_manager.get_all_tasks() == []


def test_key_at_the_limit_is_fine(task_manager: TaskManager) -> None:
    key = "k" * 256
    task_id = task_manager.create_task(key, "t", 1, priority=1024)
    assert task_manager.get_task_by_key(key).id == task_id


def _unreachable_url(kind: str) -> str:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    if kind == "postgresql":
        return f"postgresql+psycopg://dxf:{PASSWORD}@127.0.0.1:1/dxf?connect_timeout=5"
    if kind == "mariadb":
        return f"mysql+pymysql://dxf:{PASSWORD}@127.0.0.1:1/dxf?connect_timeout=5"
    return "sqlite:////nonexistent-dir/for/dxf/test.db"


def test_unreachable_database(db_kind: str) -> None:
    url = _unreachable_url(db_kind)
    tm = TaskManager(url)
    try:
        with pytest.raises(StorageUnavailableError) as info:
            tm.create_task("k", "t", 1)
    finally:
        tm.dispose()
    message = str(info.value)
    assert PASSWORD not in message and PASSWORD not in tm.url
    assert safe_url(url) in message
    assert "Check that the server is running" in message
    if db_kind != "sqlite":
        assert "dxf:***@127.0.0.1:1" in message


@pytest.mark.parametrize("db_kind", [k for k in ("postgresql", "mariadb") if k in SELECTED])
def test_wrong_credentials_never_show_the_password(db_kind: str) -> None:
    """SQLite has no credentials: this runs on the servers only."""
    from helpers.db import MYSQL_ADMIN_URL, PG_ADMIN_URL

    # PostgreSQL trusts local users, so ask for a user that does not exist there.
    base = PG_ADMIN_URL if db_kind == "postgresql" else MYSQL_ADMIN_URL
    url = base.replace("://postgres@", f"://no_such_user_dxf:{PASSWORD}@").replace(
        "://root@", f"://no_such_user_dxf:{PASSWORD}@"
    )
    tm = TaskManager(url)
    try:
        with pytest.raises(StorageUnavailableError) as info:
            tm.get_all_tasks()
    finally:
        tm.dispose()
    assert PASSWORD not in str(info.value) and "***" in str(info.value)


def test_missing_tables_say_migrate(db_kind: str, tmp_path: Path) -> None:
    url = empty_database_url(db_kind, tmp_path, "nomigrate")
    tm = TaskManager(url)
    try:
        calls: list[Callable[[], object]] = [
            lambda: tm.create_task("k", "t", 1),
            tm.get_all_tasks,
            lambda: tm.init_meta("n1"),
        ]
        for call in calls:
            with pytest.raises(StorageSchemaError, match="migrate"):
                call()
    finally:
        tm.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a valid SQLAlchemy URL"),
        (f"postgresql+nosuchdriver://u:{PASSWORD}@h/db", "no database driver"),
        (f"nosuchdb://u:{PASSWORD}@h/db", "no database driver"),
    ],
)
def test_bad_url(url: str, message: str) -> None:
    with pytest.raises(StorageUnavailableError, match=message) as info:
        TaskManager(url)
    assert PASSWORD not in str(info.value)


def test_value_too_long_for_a_column_is_a_dxf_error(task_manager: TaskManager, db_kind: str) -> None:
    """A value the schema cannot hold is a DXF error that callers do not retry."""
    try:
        task_manager.init_meta("n" * 400, "", cpu_count=1)
    except StorageDataError as err:
        assert db_kind != "sqlite"  # SQLite does not enforce VARCHAR lengths
        assert not is_transient_error(err)
        assert "refused" in str(err)
    except sa_exc.SQLAlchemyError as err:  # the failure this test exists for
        pytest.fail(f"raw driver error escaped: {err!r}")
    else:
        assert db_kind == "sqlite", "PostgreSQL and MariaDB (strict mode) must refuse the value"
    task_manager.init_meta("n1", "", cpu_count=1)
    assert "n1" in [n.id for n in task_manager.get_all_nodes()]


def test_transient_classification(db_kind: str, tmp_path: Path) -> None:
    tm = TaskManager(_unreachable_url(db_kind))
    try:
        with pytest.raises(StorageUnavailableError) as unavailable:
            tm.get_all_tasks()
    finally:
        tm.dispose()
    assert is_transient_error(unavailable.value)
    tm = TaskManager(empty_database_url(db_kind, tmp_path, "transient"))
    try:
        with pytest.raises(StorageSchemaError) as schema:
            tm.get_all_tasks()
    finally:
        tm.dispose()
    assert not is_transient_error(schema.value)
