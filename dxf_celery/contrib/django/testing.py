"""Run a project's task types end to end inside its Django tests, on the test database.

    from django.test import TransactionTestCase
    from dxf_celery.contrib.django.testing import local_cluster

    class ReportTests(TransactionTestCase):
        def test_report_runs(self):
            with local_cluster() as cluster:
                task = submit_task("r-1", "report", meta=b"{}")   # commits at once here
                assert cluster.wait_task(task.id, timeout=30).state == TaskState.SUCCEED

The cluster's nodes and scheduler are threads over the database DXF uses now, which under the
test runner is the test database (see :mod:`.testdb`). Use ``TransactionTestCase`` (pytest-django:
``@pytest.mark.django_db(transaction=True)``): inside ``TestCase``'s transaction the task is not
committed, so the cluster's connections cannot see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dxf_celery.contrib.django.conf import get_dxf
from dxf_celery.testing import LocalCluster


@contextmanager
def local_cluster(
    nodes: int = 1, slots: int = 2, check_interval: float = 0.05, **kwargs: Any
) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster` on the project's DXF database; its nodes leave cleanly on exit.

    The tables come from ``manage.py migrate`` (the test runner ran it), so the cluster does not
    migrate. Leaving removes the cluster's node rows, so a later test (or a real worker on the
    same test database) never waits for them to time out.
    """
    kwargs.setdefault("migrate_db", False)
    cluster = LocalCluster(
        get_dxf().settings.database_url, nodes=nodes, slots=slots, check_interval=check_interval, **kwargs
    )
    cluster.start()
    try:
        yield cluster
    finally:
        node_ids = list(cluster.node_ids)
        tm = cluster.task_manager
        cluster.stop()
        for node_id in node_ids:
            tm.delete_node(node_id)
        tm.dispose()
