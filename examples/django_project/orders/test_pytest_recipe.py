"""The pytest-django recipe of docs/django.md (``pytest`` in this folder; Django's runner ignores these functions)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection, transaction

from dxf_celery.contrib.django import get_dxf, submit_task
from dxf_celery.contrib.django.models import Task
from dxf_celery.contrib.django.testing import local_cluster
from dxf_celery.errors import TaskNotFoundError
from dxf_celery.proto import TaskState


@pytest.mark.django_db
def test_rollback_leaves_no_task() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        submit_task("pt-rb", "noop")
        raise RuntimeError("business rule failed")
    assert not Task.objects.filter(task_key="pt-rb").exists()
    with pytest.raises(TaskNotFoundError):
        get_dxf().get_task("pt-rb")


@pytest.mark.django_db(transaction=True)
def test_committed_task_runs_on_the_test_database(client: Any) -> None:
    assert connection.settings_dict["NAME"].startswith("test_")
    assert get_dxf().settings.database_url.endswith("/" + connection.settings_dict["NAME"])
    with local_cluster(nodes=2, slots=2) as cluster:
        response = client.post("/orders/", json.dumps({"key": "pt-run", "items": 4}), content_type="application/json")
        assert response.status_code == 201
        done = cluster.wait_task(response.json()["id"], timeout=60)
    assert done.state == TaskState.SUCCEED
    assert client.get("/orders/pt-run/").json()["steps"]["1"]["counts"] == {"succeed": 4}
