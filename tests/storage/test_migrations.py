"""The shipped Alembic migrations produce exactly the SQLAlchemy metadata, on every database,
in their own version table, next to an application's own Alembic history.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers.storage import alembic_head, empty_database_url
from sqlalchemy import Engine, create_engine, inspect, text

from dxf_celery.errors import StorageUnavailableError
from dxf_celery.storage import TaskManager, migrate
from dxf_celery.storage.migrate import VERSION_TABLE, downgrade
from dxf_celery.storage.tables import metadata

DXF_TABLES = {t.name for t in metadata.sorted_tables}


@pytest.fixture
def empty_url(db_kind: str, tmp_path: Path) -> str:
    return empty_database_url(db_kind, tmp_path, "migrations")


@pytest.fixture
def engine(empty_url: str) -> Iterator[Engine]:
    eng = create_engine(empty_url)
    yield eng
    eng.dispose()


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diffs = compare_metadata(ctx, metadata)
    # The version table is Alembic's, not part of the metadata.
    return [d for d in diffs if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == VERSION_TABLE)]


def _app_alembic_version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]


def test_migrated_schema_equals_metadata(empty_url: str, engine: Engine) -> None:
    migrate(empty_url)
    assert _diff(engine) == []
    assert set(inspect(engine).get_table_names()) >= DXF_TABLES


def test_own_version_table_next_to_the_apps(empty_url: str, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('app_head_1234')"))
    migrate(empty_url)
    with engine.connect() as conn:
        dxf_versions = [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    assert dxf_versions == [alembic_head()]
    assert _app_alembic_version(engine) == ["app_head_1234"]
    downgrade(empty_url)
    assert _app_alembic_version(engine) == ["app_head_1234"]


def test_migrate_twice_is_a_no_op(empty_url: str, engine: Engine) -> None:
    migrate(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO dxf_node (host, role, cpu_count) VALUES ('n1', '', 4)"))
    migrate(empty_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT host FROM dxf_node")).scalars().all() == ["n1"]
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [alembic_head()]
    assert _diff(engine) == []


def test_migrate_accepts_an_engine(empty_url: str, engine: Engine) -> None:
    migrate(engine)
    assert _diff(engine) == []


def test_downgrade_to_base_drops_the_tables(empty_url: str, engine: Engine) -> None:
    migrate(empty_url)
    downgrade(empty_url)
    left = set(inspect(engine).get_table_names())
    assert not (DXF_TABLES & left)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 0
    migrate(empty_url)  # and back up again
    assert _diff(engine) == []


def test_migrate_unreachable_database_is_a_dxf_error(db_kind: str) -> None:
    secret = "mig-s3cret"
    url = {
        "postgresql": f"postgresql+psycopg://dxf:{secret}@127.0.0.1:1/dxf?connect_timeout=5",
        "mariadb": f"mysql+pymysql://dxf:{secret}@127.0.0.1:1/dxf?connect_timeout=5",
        "sqlite": "sqlite:////nonexistent-dir/for/dxf/migrate.db",
    }[db_kind]
    with pytest.raises(StorageUnavailableError, match="Check that the server is running") as info:
        migrate(url)
    assert secret not in str(info.value)


def test_0002_adds_node_task_types_to_a_0001_database_and_back(empty_url: str, engine: Engine) -> None:
    """A cluster upgraded under running nodes keeps them; their rows say "types unknown"."""
    migrate(empty_url, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO dxf_node (host, role, cpu_count) VALUES ('old@host', 'gpu', 4)"))
    migrate(empty_url, "0002")
    tm = TaskManager(empty_url)
    try:
        (node,) = tm.get_all_nodes()
        assert (node.id, node.role, node.cpu_count, node.task_types) == ("old@host", "gpu", 4, None)
        tm.init_meta("new@host", "", 2, task_types=["noop"])
        assert [n.task_types for n in tm.get_all_nodes()] == [("noop",), None]
    finally:
        tm.dispose()
    downgrade(empty_url, "0001")
    assert "task_types" not in {c["name"] for c in inspect(engine).get_columns("dxf_node")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT host FROM dxf_node ORDER BY host")).scalars().all() == ["new@host", "old@host"]
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == ["0001"]
