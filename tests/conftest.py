"""Shared fixtures: real databases (SQLite, PostgreSQL, MariaDB), each test on clean tables.

The database plumbing lives in ``helpers/db.py`` (``DXF_TEST_DATABASES`` narrows the matrix);
tests are in one folder per layer (unit, storage, executor, scheduler, celery, contrib,
dashboard, examples) and import their builders from ``helpers/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.db import ALL_DATABASES, SELECTED, make_db_url
from helpers.executor import Cluster, cluster_fixture, param_factory_fixture

from dxf_celery.storage import TaskManager
from dxf_celery.taskexecutor import Param
from dxf_celery.testing import preserved_registrations


@pytest.fixture(autouse=True)
def _task_types_restored() -> Iterator[None]:
    """Each test leaves the process's task-type registrations as it found them."""
    with preserved_registrations():
        yield


@pytest.fixture(params=[d for d in ALL_DATABASES if d in SELECTED])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> str:
    return make_db_url(db_kind, tmp_path)


@pytest.fixture
def task_manager(db_url: str) -> Iterator[TaskManager]:
    tm = TaskManager(db_url)
    yield tm
    tm.dispose()


# -- the executor tests' harness (tests/test_taskexecutor_support.py), shared by their modules


@pytest.fixture
def cluster(task_manager: TaskManager) -> Iterator[Cluster]:
    """Node Managers on one database (modules with their own ``cluster`` fixture override it)."""
    yield from cluster_fixture(task_manager)


@pytest.fixture
def make_param(task_manager: TaskManager) -> Callable[..., Param]:
    return param_factory_fixture(task_manager)
