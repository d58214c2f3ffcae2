"""The Flask example's tests (``pytest`` in examples/flask_app; PostgreSQL, broker from CELERY_BROKER_URL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_DATABASE_URL
from flask import Flask
from flask.testing import FlaskClient
from shop_flask import db
from sqlalchemy import func, select

from dxf_celery.proto import TaskState
from dxf_celery.testing import LocalCluster, wait_until

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def key() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def _orders(app: Flask, key: str) -> int:
    with app.app_context(), db.engine().connect() as conn:
        return int(conn.execute(select(func.count()).where(db.orders.c.key == key)).scalar_one())


def test_rollback_leaves_neither_order_nor_task(app: Flask, client: FlaskClient, key: str) -> None:
    response = client.post("/orders/", json={"key": key, "items": 2, "reject": True})
    assert response.status_code == 422
    assert _orders(app, key) == 0
    missing = client.get(f"/orders/{key}")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": f"no task with key {key!r}"}


def test_committed_order_runs_and_the_view_shows_progress(
    app: Flask, client: FlaskClient, cluster: LocalCluster, key: str
) -> None:
    response = client.post("/orders/", json={"key": key, "items": 3})
    assert response.status_code == 201, response.get_json()
    assert _orders(app, key) == 1
    assert cluster.wait_task(response.get_json()["id"], timeout=60).state == TaskState.SUCCEED
    body = client.get(f"/orders/{key}").get_json()
    assert body["state"] == "succeed" and body["steps"]["1"]["counts"] == {"succeed": 3}


def test_taken_task_key_is_a_409_and_rolls_the_order_back(app: Flask, client: FlaskClient, key: str) -> None:
    app.extensions["dxf"].submit_task(key, "noop")  # the key is taken by a task without an order
    response = client.post("/orders/", json={"key": key, "items": 5})
    assert response.status_code == 409
    assert response.get_json() == {"error": f"order {key!r} exists already"}
    assert _orders(app, key) == 0


def test_flask_dxf_commands(app: Flask, client: FlaskClient, key: str) -> None:
    assert client.post("/orders/", json={"key": key, "items": 1}).status_code == 201
    runner = app.test_cli_runner()
    listing = runner.invoke(args=["dxf", "list", "--limit", "100000"])
    assert listing.exit_code == 0, listing.output
    assert key in listing.output
    shown = runner.invoke(args=["dxf", "show", key])
    assert shown.exit_code == 0 and "pending" in shown.output, shown.output
    assert runner.invoke(args=["dxf", "cancel", key]).exit_code == 0
    assert app.extensions["dxf"].get_task(key).state == TaskState.CANCELLING  # no scheduler runs here
    missing = runner.invoke(args=["dxf", "show", "no-such-key"])
    assert missing.exit_code != 0 and "no-such-key" in missing.output
    purge = runner.invoke(args=["dxf", "purge", "--older-than", "365"])
    assert purge.exit_code == 0 and "purged" in purge.output, purge.output


@pytest.fixture
def worker(app: Flask, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery -A shop_flask.make_celery worker -B`` on the test database."""
    env = dict(os.environ, SHOP_DATABASE_URL=TEST_DATABASE_URL)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    log = tmp_path / "worker.log"
    celery = str(Path(sys.executable).with_name("celery"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                celery,
                "-A",
                "shop_flask.make_celery",
                "worker",
                "-B",
                "-s",
                str(tmp_path / "beat"),
                "-n",
                f"flask-{uuid.uuid4().hex[:6]}@%h",
                "-P",
                "threads",
                "-c",
                "2",
                "-l",
                "info",
            ],
            cwd=str(PROJECT),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log = log  # type: ignore[attr-defined]
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_committed_order_runs_on_a_real_worker(
    app: Flask, client: FlaskClient, worker: subprocess.Popen[bytes], key: str
) -> None:
    dxf = app.extensions["dxf"]
    log: Path = worker.log  # type: ignore[attr-defined]

    def registered() -> bool:
        if worker.poll() is not None:
            raise AssertionError(f"worker exited:\n{log.read_text()[-3000:]}")
        return any(n.id.startswith("flask-") for n in dxf.task_manager.get_all_nodes())

    wait_until(registered, timeout=60, what="the worker to register its node")
    response = client.post("/orders/", json={"key": key, "items": 2})
    assert response.status_code == 201
    done = dxf.wait_task(response.get_json()["id"], timeout=90)
    assert done.state == TaskState.SUCCEED, log.read_text()[-3000:]
