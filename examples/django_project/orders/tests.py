"""The example's own tests: ``python manage.py test`` (PostgreSQL; the broker from CELERY_BROKER_URL).

They check what a Django user relies on: a rolled-back view leaves no task, a committed one
runs (in-process LocalCluster, and a real ``celery worker``), the admin shows and cancels
tasks, and nothing a test submits reaches the non-test database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from dxf_celery.contrib.django import get_dxf, submit_task
from dxf_celery.contrib.django.conf import database_key
from dxf_celery.contrib.django.models import Subtask, Task, TaskHistory
from dxf_celery.contrib.django.testing import local_cluster
from dxf_celery.errors import TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.examples import noop
from dxf_celery.proto import TaskState
from dxf_celery.testing import wait_until
from orders.models import Order

PROJECT = Path(__file__).resolve().parents[1]


def post_order(client: Any, **body: Any) -> Any:
    return client.post("/orders/", json.dumps(body), content_type="application/json")


class TransactionalSubmitTests(TestCase):
    def test_rollback_leaves_neither_order_nor_task(self) -> None:
        response = post_order(self.client, key="rb-1", items=2, reject=True)
        self.assertEqual(response.status_code, 422)
        self.assertFalse(Order.objects.filter(key="rb-1").exists())
        self.assertFalse(Task.objects.filter(task_key="rb-1").exists())
        with self.assertRaises(TaskNotFoundError):
            get_dxf().get_task("rb-1")

    def test_task_is_created_in_the_callers_transaction(self) -> None:
        with transaction.atomic():
            task = submit_task("tx-1", noop.TASK_TYPE)
            # Visible to the caller's connection at once, to every other connection only on commit.
            self.assertTrue(Task.objects.filter(id=task.id, task_key="tx-1", state="pending").exists())
            with self.assertRaises(TaskNotFoundError):
                get_dxf().get_task("tx-1")

    def test_duplicate_key_is_refused_and_the_transaction_goes_on(self) -> None:
        with transaction.atomic():
            Order.objects.create(key="dup-1", items=1)
            submit_task("dup-1", noop.TASK_TYPE)
            with self.assertRaises(TaskAlreadyExistsError):
                submit_task("dup-1", noop.TASK_TYPE)
            Order.objects.create(key="dup-2", items=1)  # the savepoint kept the transaction usable
        self.assertEqual(Order.objects.filter(key__startswith="dup-").count(), 2)

    def test_unknown_key_is_a_404_with_a_message(self) -> None:
        response = self.client.get("/orders/no-such-order/")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.json(), {"error": "no order task with key 'no-such-order'"})


class TestDatabaseTests(TestCase):
    def test_submits_reach_the_test_database_only(self) -> None:
        test_name = connection.settings_dict["NAME"]
        self.assertTrue(test_name.startswith("test_"), test_name)
        dxf = get_dxf()
        key = database_key(dxf.settings.database_url)
        self.assertIsNotNone(key)
        assert key is not None
        self.assertEqual(key[3], test_name)
        self.assertEqual(post_order(self.client, key="tdb-view", items=1).status_code, 201)
        direct = dxf.submit_task("tdb-direct", noop.TASK_TYPE)  # DXF's own connection, committed at once
        self.assertEqual(get_dxf().get_task(direct.id).key, "tdb-direct")
        self.assertTrue(Task.objects.filter(task_key="tdb-view").exists())
        real = test_name.removeprefix("test_")
        settings = connection.settings_dict
        # CI migrates the non-test database first (DXF_EXAMPLE_REAL_DB_MIGRATED=1), so the
        # tables exist there and the count below is a real check.
        must_exist = os.environ.get("DXF_EXAMPLE_REAL_DB_MIGRATED") == "1"
        try:
            conn = psycopg.connect(
                dbname=real,
                user=settings["USER"],
                host=settings["HOST"],
                port=settings["PORT"] or 5432,
                password=settings["PASSWORD"] or None,
            )
        except psycopg.OperationalError:
            if must_exist:
                raise
            return  # no non-test database at all: nothing can have reached it
        with conn:
            exists = conn.execute("SELECT to_regclass('dxf_task') IS NOT NULL").fetchone()
            if must_exist:
                self.assertEqual(exists, (True,), "the non-test database should have DXF tables for this check")
            if exists == (True,):
                rows = conn.execute("SELECT count(*) FROM dxf_task WHERE task_key LIKE 'tdb-%%'").fetchone()
                self.assertEqual(rows, (0,))


class EndToEndTests(TransactionTestCase):
    def setUp(self) -> None:
        user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
        self.client.force_login(user)

    def test_committed_order_runs_and_the_view_shows_progress(self) -> None:
        with local_cluster() as cluster:
            response = post_order(self.client, key="e2e-1", items=3)
            self.assertEqual(response.status_code, 201, response.content)
            done = cluster.wait_task(response.json()["id"], timeout=60)
        self.assertEqual(done.state, TaskState.SUCCEED)
        body = self.client.get("/orders/e2e-1/").json()
        self.assertEqual(body["state"], "succeed")
        self.assertEqual(body["steps"]["1"]["counts"], {"succeed": 3})

    def test_admin_changelist_and_task_page(self) -> None:
        with local_cluster() as cluster:
            task_id = post_order(self.client, key="adm-1", items=2).json()["id"]
            cluster.wait_task(task_id, timeout=60)
            # A finished task moves to history on a later scheduler pass.
            wait_until(
                lambda: TaskHistory.objects.filter(id=task_id).exists(), timeout=60, what="the task to reach history"
            )
        pending_id = post_order(self.client, key="adm-pending", items=1).json()["id"]
        live = self.client.get("/admin/dxf_celery/task/")
        self.assertEqual(live.status_code, 200)
        self.assertContains(live, "adm-pending")
        self.assertEqual(self.client.get("/admin/dxf_celery/task/?state=pending&progress=none").status_code, 200)
        self.assertEqual(self.client.get(f"/admin/dxf_celery/task/{pending_id}/change/").status_code, 200)
        finished = self.client.get("/admin/dxf_celery/taskhistory/?q=adm-1")
        self.assertContains(finished, "adm-1")
        page = self.client.get(f"/admin/dxf_celery/taskhistory/{task_id}/change/")
        self.assertContains(page, "adm-1")
        subtasks = self.client.get("/admin/dxf_celery/subtaskhistory/?q=adm-1")
        self.assertEqual(subtasks.status_code, 200)
        rows = get_dxf().get_subtasks(task_id)
        self.assertEqual(len(rows), 2)
        for s in rows:  # each subtask is on the task page with its node and state
            self.assertContains(page, f"<td>{s.exec_id}</td><td>{s.ordinal}</td><td>succeed</td>", html=False)
        self.assertEqual(self.client.get("/admin/dxf_celery/node/").status_code, 200)

    def test_cancel_action_cancels_a_running_task(self) -> None:
        with local_cluster() as cluster:
            task_id = post_order(self.client, key="cx-1", items=2, sleep=60).json()["id"]
            wait_until(
                lambda: Subtask.objects.filter(task_id=task_id, state="running").exists(),
                timeout=60,
                what="a running subtask",
            )
            response = self.client.post(
                "/admin/dxf_celery/task/", {"action": "cancel_tasks", "_selected_action": [str(task_id)]}
            )
            self.assertEqual(response.status_code, 302)
            done = cluster.wait_task(task_id, timeout=60, raise_error=False)
            wait_until(
                lambda: TaskHistory.objects.filter(id=task_id, state="reverted").exists(),
                timeout=60,
                what="the cancelled task to reach history",
            )
        self.assertEqual(done.state, TaskState.REVERTED)
        self.assertIn("cancel", str(done.error))
        self.assertFalse(Subtask.objects.filter(task_id=task_id).exists())


class RealWorkerTests(TransactionTestCase):
    """A real ``celery -A shop worker -B`` on the test database runs what a view committed."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        env = dict(os.environ)
        env["DJANGO_DB_NAME"] = connection.settings_dict["NAME"]  # the worker's "real" database is our test one
        env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = Path(self.tmp.name) / "worker.log"
        celery = str(Path(sys.executable).with_name("celery"))
        with open(self.log, "wb") as out:
            self.worker = subprocess.Popen(
                [
                    celery,
                    "-A",
                    "shop",
                    "worker",
                    "-B",
                    "-s",
                    str(Path(self.tmp.name) / "beat"),
                    "-n",
                    "ex@%h",
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

    def tearDown(self) -> None:
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait(10)
        self.tmp.cleanup()

    def test_committed_order_runs_on_a_real_worker(self) -> None:
        tm = get_dxf().task_manager

        def registered() -> bool:
            if self.worker.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.log.read_text()[-3000:]}")
            return any(n.id.startswith("ex@") for n in tm.get_all_nodes())

        wait_until(registered, timeout=60, what="the worker to register its node")
        response = post_order(self.client, key="real-1", items=2)
        self.assertEqual(response.status_code, 201)
        done = get_dxf().wait_task(response.json()["id"], timeout=90)
        self.assertEqual(done.state, TaskState.SUCCEED, self.log.read_text()[-3000:])
        self.assertEqual(self.client.get("/orders/real-1/").json()["steps"]["1"]["counts"], {"succeed": 2})
