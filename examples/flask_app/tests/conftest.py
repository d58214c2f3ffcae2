"""The Flask test recipe of docs/flask.md: the app on a test database, and an in-process LocalCluster.

``SHOP_TEST_DATABASE_URL`` names a PostgreSQL database the tests may fill (CI creates an empty
one); the DXF tables are created with ``dxf.migrate()``, as ``flask dxf migrate`` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from shop_flask import create_app

from dxf_celery.testing import LocalCluster

TEST_DATABASE_URL = os.environ.get(
    "SHOP_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/shop_flask_test"
)


@pytest.fixture
def app() -> Iterator[Flask]:
    app = create_app({"TESTING": True, "DATABASE_URL": TEST_DATABASE_URL})
    dxf = app.extensions["dxf"]
    dxf.migrate()
    yield app
    dxf.state.dispose()
    app.extensions["shop_db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def cluster(app: Flask) -> Iterator[LocalCluster]:
    """Nodes and a scheduler as threads on the test database: what the app submits runs."""
    with LocalCluster(TEST_DATABASE_URL, nodes=1, slots=2, check_interval=0.05, migrate_db=False) as cluster:
        yield cluster
        for node_id in list(cluster.node_ids):
            cluster.task_manager.delete_node(node_id)
