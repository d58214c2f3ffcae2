"""The e2e tests' Celery app for workers and beat: ``celery -A helpers.celery_apps.dxf_app`` (PYTHONPATH=tests).

Everything comes from the environment so each test picks its broker, database and timing:
``DXF_E2E_BROKER``, ``DXF_E2E_DB_URL``, ``DXF_E2E_SLOTS``, ``DXF_E2E_TYPES`` ("0" = this
worker knows no task type; otherwise it knows ``e2e`` and the fault suite's ``fault``),
``DXF_E2E_FS_DIR`` (folder of the ``filesystem://`` broker), ``DXF_E2E_METRICS_PORT`` (the
worker's Prometheus port) and ``DXF_E2E_CONF`` (a JSON object of further settings, e.g.
``{"dxf_shutdown_timeout": 3}``).
The test process builds the same app with :func:`create_app` to submit tasks.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from dxf_celery import DXF

#: Short periods so that the tests are quick without any sleep. Two are not short on purpose:
#: they are deadlines that a slow machine must never miss. ``dxf_node_ttl`` declares a node
#: dead after that long without a heartbeat (3 s on a loaded 2-core machine with SQLite
#: let a live node vanish and come back, and its subtasks could run twice); a cancelled
#: subtask that watches its context must stop cooperatively within ``dxf_cancel_grace``,
#: or it is interrupted by force (which a test that expects a cooperative stop sees).
FAST_SETTINGS: dict[str, Any] = {
    "dxf_task_check_interval": 0.1,
    "dxf_subtask_check_interval": 0.05,
    "dxf_max_subtask_check_interval": 0.2,
    "dxf_watch_task_interval": 0.2,
    "dxf_heartbeat_interval": 0.3,
    "dxf_scheduler_interval": 0.2,
    "dxf_balance_interval": 0.3,
    "dxf_node_ttl": 10.0,
    # A killed worker is lost (its running subtasks follow the DXF rule) TTL + this after its
    # last heartbeat: short here so the kill scenarios end quickly (the default is 60 s).
    "dxf_node_lost_grace": 5.0,
    "dxf_lease_ttl": 2.0,
    "dxf_cancel_grace": 5.0,
    "dxf_launch_timeout": 30.0,
}


def filesystem_transport_options(folder: str) -> dict[str, Any]:
    for sub in ("in", "processed", "control"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    return {
        "data_folder_in": os.path.join(folder, "in"),
        "data_folder_out": os.path.join(folder, "in"),
        "processed_folder": os.path.join(folder, "processed"),
        "store_processed": False,
        "control_folder": os.path.join(folder, "control"),
        "polling_interval": 0.05,
    }


def create_app(
    broker: str | None = None, db_url: str | None = None, slots: int | None = None, fs_dir: str | None = None
) -> tuple[Celery, DXF]:
    broker = broker or os.environ.get("DXF_E2E_BROKER", "redis://127.0.0.1:6379/3")
    fs_dir = fs_dir or os.environ.get("DXF_E2E_FS_DIR")
    app = Celery("dxf_e2e", broker=broker)
    conf: dict[str, Any] = dict(FAST_SETTINGS)
    conf.update(
        dxf_database_url=db_url or os.environ.get("DXF_E2E_DB_URL", "sqlite:///dxf-e2e.db"),
        dxf_node_slots=slots or int(os.environ.get("DXF_E2E_SLOTS", "2")),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if os.environ.get("DXF_E2E_METRICS_PORT"):
        conf["dxf_metrics_port"] = int(os.environ["DXF_E2E_METRICS_PORT"])
    conf.update(json.loads(os.environ.get("DXF_E2E_CONF") or "{}"))
    if broker.startswith("filesystem://") and fs_dir:
        conf["broker_transport_options"] = filesystem_transport_options(fs_dir)
    app.conf.update(conf)
    dxf = DXF(app)
    return app, dxf


app, dxf = create_app()

if os.environ.get("DXF_E2E_TYPES", "1") == "1":
    from helpers.celery_apps import fault_types as _fault_types  # noqa: F401  (registers "fault")
    from helpers.celery_apps import types as _types  # noqa: F401  (registers the "e2e" type)
