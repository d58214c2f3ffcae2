"""Flask and Django integrations on a real database; a LocalCluster runs what the web side submits."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from helpers.db import make_db_url

from dxf_celery.app import DXF
from dxf_celery.examples import noop
from dxf_celery.proto import TaskState
from dxf_celery.settings import DXFConfigError
from dxf_celery.testing import LocalCluster

flask = pytest.importorskip("flask")


@pytest.fixture
def celery_app(db_url: str) -> Iterator[Celery]:
    app = Celery("contrib_test", broker="memory://", set_as_current=False)
    app.conf.dxf_database_url = db_url
    yield app
    state = getattr(app, "dxf_state", None)
    if state is not None:
        state.dispose()


def make_flask(celery_app: Celery) -> flask.Flask:
    from dxf_celery.contrib.flask import DXFFlask, get_dxf

    web = flask.Flask("contrib_web")
    web.extensions["celery"] = celery_app
    ext = DXFFlask(web)

    @web.post("/jobs/<key>")
    def submit(key: str) -> dict[str, object]:
        task = ext.submit_task(key, noop.TASK_TYPE, meta=noop.noop_meta(subtasks=3))
        return {"id": task.id}

    @web.get("/jobs/<key>")
    def show(key: str) -> dict[str, object]:
        task = get_dxf().get_task(key)
        return {"state": task.state.value, "progress": ext.get_task_progress(task.id).to_dict()["steps"]}

    return web


def test_flask_extension_submits_and_reads_tasks(celery_app: Celery, db_url: str) -> None:
    noop.register()
    web = make_flask(celery_app)
    assert isinstance(web.extensions["dxf"], DXF)
    assert web.extensions["dxf"] is celery_app.dxf  # type: ignore[attr-defined]
    client = web.test_client()
    task_id = client.post("/jobs/web-1").get_json()["id"]
    assert client.get("/jobs/web-1").get_json()["state"] == "pending"
    with LocalCluster(db_url, nodes=1, slots=2, check_interval=0.02) as cluster:
        assert cluster.wait_task(task_id, timeout=60).state == TaskState.SUCCEED
    body = client.get("/jobs/web-1").get_json()
    assert body["state"] == "succeed"
    assert body["progress"]["1"]["counts"] == {"succeed": 3}
    with web.app_context():
        ext = web.extensions["dxf"]
        assert [t.key for t in ext.list_tasks()] == ["web-1"]


def test_flask_settings_and_errors(tmp_path: Path) -> None:
    from dxf_celery.contrib.flask import DXFFlask, get_dxf

    web = flask.Flask("no_celery")
    with pytest.raises(DXFConfigError, match="found no Celery app"):
        DXFFlask(web)
    celery = Celery("flask_conf", broker="memory://", set_as_current=False)
    web.config["DXF_DATABASE_URL"] = f"sqlite:///{tmp_path / 'flask.db'}"
    web.config["DXF_NODE_SLOTS"] = 3
    ext = DXFFlask()
    dxf = ext.init_app(web, celery_app=celery)
    assert dxf.settings.database_url.endswith("flask.db") and dxf.settings.node_slots == 3
    with web.app_context():
        assert get_dxf() is dxf and ext.dxf is dxf
        assert ext.list_tasks() == []
    other = flask.Flask("other")
    with other.app_context(), pytest.raises(DXFConfigError, match="has no DXF"):
        get_dxf()
    celery.dxf_state.dispose()  # type: ignore[attr-defined]


def test_django_helpers_and_app_config(tmp_path: Path) -> None:
    """Django can be configured once per process, so this runs once (on SQLite)."""
    pytest.importorskip("django")
    import django
    from django.conf import settings

    from dxf_celery.contrib import django as dj

    # A Django project app with a dxf_tasks module that registers a task type.
    pkg = tmp_path / "d2proj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "dxf_tasks.py").write_text(
        textwrap.dedent("""
        from dxf_celery.examples import noop
        from dxf_celery.scheduler.register import register_scheduler_factory
        from dxf_celery.taskexecutor.register import register_task_type
        register_task_type("d2proj_noop", noop.executor_factory)
        register_scheduler_factory("d2proj_noop", noop.scheduler_factory)
        LOADED = True
    """)
    )
    sys.path.insert(0, str(tmp_path))
    db_url = make_db_url("sqlite", tmp_path)
    celery_app = Celery("django_proj", broker="memory://", set_as_current=False)
    celery_app.conf.dxf_database_url = db_url
    module = f"{__name__}_celery"
    sys.modules[module] = type(sys)(module)
    sys.modules[module].app = celery_app  # type: ignore[attr-defined]
    DXF(celery_app)
    try:
        assert not settings.configured, "only this test may configure Django in the test process"
        databases = {
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "django.db")},
            "pg": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "shop",
                "USER": "app",
                "PASSWORD": "s3cr@t",
                "HOST": "db.internal",
                "PORT": "5433",
            },
            "mysql": {"ENGINE": "django.db.backends.mysql", "NAME": "shop", "USER": "root", "HOST": "127.0.0.1"},
            "oracle": {"ENGINE": "django.db.backends.oracle", "NAME": "x"},
        }
        settings.configure(
            INSTALLED_APPS=["dxf_celery.contrib.django.DXFConfig", "d2proj"],
            DATABASES=databases,
            DXF_CELERY_APP=f"{module}:app",
        )
        django.setup()
        assert sys.modules["d2proj.dxf_tasks"].LOADED  # ready() autodiscovered it
        from dxf_celery.taskexecutor.register import get_task_executor_factory

        assert get_task_executor_factory("d2proj_noop") is noop.executor_factory
        assert dj.database_url("default") == f"sqlite:///{tmp_path / 'django.db'}"
        assert dj.database_url("pg") == "postgresql+psycopg://app:s3cr%40t@db.internal:5433/shop"
        assert dj.database_url("mysql", databases) == "mysql+pymysql://root@127.0.0.1/shop"
        with pytest.raises(DXFConfigError, match="cannot map"):
            dj.database_url("oracle")
        with pytest.raises(DXFConfigError, match="no 'nope' entry"):
            dj.database_url("nope")

        dxf = dj.get_dxf()
        assert dxf is celery_app.dxf  # type: ignore[attr-defined]
        task = dxf.submit_task("django-1", "d2proj_noop", meta=json.dumps({"subtasks": 2}).encode())
        with LocalCluster(db_url, nodes=1, slots=2, check_interval=0.02) as cluster:
            assert cluster.wait_task(task.id, timeout=60).state == TaskState.SUCCEED
    finally:
        celery_app.dxf_state.dispose()  # type: ignore[attr-defined]
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
