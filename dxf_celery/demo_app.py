"""The Celery app of the demo (and of docker-compose.yml): a plain Celery app plus ``DXF(app)``.

Configured from the environment so the demo, its worker processes and beat agree:

- ``DXF_DEMO_DIR``: folder of the embedded default (default ``./.dxf-demo``);
- ``DXF_DEMO_BROKER``: broker URL (default: kombu's ``filesystem://`` transport in that
  folder, with a ``control_folder`` so revoke and remote control work without a server);
- ``DXF_DEMO_DATABASE``: the dxf database URL (default: a SQLite file in that folder);
- ``DXF_DEMO_NODE_SLOTS``: slots per worker node (default 2).

Start a node by hand with ``celery -A dxf_celery.demo_app worker -n node1@%h`` and beat with
``celery -A dxf_celery.demo_app beat``; ``python -m dxf_celery.demo`` does all of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery

from dxf_celery.app import DXF
from dxf_celery.examples import csv_import, noop

#: Intervals of the demo: quicker than production so a small job shows every phase.
DEMO_SETTINGS: dict[str, Any] = {
    "dxf_task_check_interval": 0.2,
    "dxf_subtask_check_interval": 0.1,
    "dxf_max_subtask_check_interval": 0.5,
    "dxf_scheduler_interval": 0.3,
    "dxf_heartbeat_interval": 1.0,
    "dxf_node_ttl": 10.0,
}


def demo_dir() -> Path:
    return Path(os.environ.get("DXF_DEMO_DIR") or Path.cwd() / ".dxf-demo").resolve()


def filesystem_transport_options(base: Path) -> dict[str, Any]:
    """Folders of kombu's filesystem transport: one queue folder, processed files dropped.

    ``control_folder`` holds the exchange tables that make fanout (remote control, revoke)
    work, which the SQLAlchemy transport cannot do.
    """
    queue = base / "broker" / "queue"
    control = base / "broker" / "control"
    processed = base / "broker" / "processed"
    for folder in (queue, control, processed):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(processed),
        "store_processed": False,
        "control_folder": str(control),
        "polling_interval": 0.1,
    }


def make_app() -> tuple[Celery, DXF]:
    base = demo_dir()
    broker = os.environ.get("DXF_DEMO_BROKER") or "filesystem://"
    database = os.environ.get("DXF_DEMO_DATABASE") or f"sqlite:///{base / 'dxf.db'}"
    base.mkdir(parents=True, exist_ok=True)  # SQLite file, broker folders, beat schedule
    celery_app = Celery("dxf_demo", broker=broker)
    conf: dict[str, Any] = {
        "dxf_database_url": database,
        "dxf_node_slots": int(os.environ.get("DXF_DEMO_NODE_SLOTS") or 2),
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "beat_schedule_filename": str(base / "celerybeat-schedule"),
        **DEMO_SETTINGS,
    }
    if broker.startswith("filesystem"):
        conf["broker_transport_options"] = filesystem_transport_options(base)
    elif broker.startswith("redis"):
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    celery_app.conf.update(conf)
    return celery_app, DXF(celery_app)


app, dxf = make_app()

# The example task types must be registered wherever workers (and the scheduler pass) run.
csv_import.register()
noop.register()
