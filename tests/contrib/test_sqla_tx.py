"""submit_task_in: a task created in the caller's SQLAlchemy transaction goes with it, on every database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, func, insert, select

from dxf_celery.app import DXF
from dxf_celery.contrib.sqla_tx import submit_task_in
from dxf_celery.errors import TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.storage.engine import build_engines
from dxf_celery.storage.external_tx import task_manager_in

business = MetaData()
orders = Table("sqla_tx_order", business, Column("id", Integer, primary_key=True), Column("key", String(50)))


@pytest.fixture
def dxf(db_url: str) -> Iterator[DXF]:
    app = Celery("sqla_tx", broker="memory://", set_as_current=False)
    app.conf.dxf_database_url = db_url
    ext = DXF(app)
    yield ext
    ext.state.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    # The application's own engine (DXF's tuned one on SQLite, so savepoints work there).
    engine = build_engines(db_url)[1] if db_url.startswith("sqlite") else create_engine(db_url)
    business.drop_all(engine)
    business.create_all(engine)
    yield engine
    business.drop_all(engine)
    engine.dispose()


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(orders)).scalar_one())


def test_rollback_removes_the_task_with_the_rows(dxf: DXF, engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(insert(orders).values(key="sq-1"))
        task = submit_task_in(conn, dxf, "sq-1", "noop")
        assert task.key == "sq-1"
        raise RuntimeError("business rule failed")
    assert _count(engine) == 0
    with pytest.raises(TaskNotFoundError):
        dxf.get_task("sq-1")


def test_commit_publishes_both_and_a_taken_key_keeps_the_transaction(dxf: DXF, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(orders).values(key="sq-2"))
        task = submit_task_in(conn, dxf, "sq-2", "noop", concurrency=1)
        with pytest.raises(TaskNotFoundError):
            dxf.get_task("sq-2")  # other connections see it on commit only
        with pytest.raises(TaskAlreadyExistsError):
            submit_task_in(conn, dxf, "sq-2", "noop")
        conn.execute(insert(orders).values(key="sq-3"))  # the savepoint kept the transaction usable
    assert _count(engine) == 2
    assert dxf.get_task("sq-2").id == task.id


def test_a_connection_without_transaction_is_refused(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(ValueError, match="no open transaction"), task_manager_in(conn):
        pass
