"""The Flask example: an app factory with Celery, DXF, a blueprint and the ``flask dxf`` commands.

flask --app shop_flask run                      # the web app
celery -A shop_flask.make_celery worker -B      # a worker (with embedded beat)
flask --app shop_flask dxf list                 # the celery dxf commands
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from flask import Flask

from dxf_celery.contrib.flask import DXFFlask
from dxf_celery.contrib.flask_cli import dxf_cli

dxf_ext = DXFFlask()


def celery_init_app(app: Flask) -> Celery:
    """The Flask docs' pattern: a Celery app configured from ``app.config["CELERY"]``."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; ``config`` overrides Flask keys, and ``config["CELERY"]`` Celery/DXF settings."""
    config = dict(config or {})
    database_url = config.pop("DATABASE_URL", None) or os.environ.get(
        "SHOP_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/shop_flask"
    )
    celery_conf = {
        "broker_url": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "broker_connection_retry_on_startup": True,
        # The DXF tables share the app's database, so a submit can join its transactions.
        "dxf_database_url": database_url,
        "dxf_scheduler_interval": 0.2,
        "dxf_task_check_interval": 0.1,
        "dxf_node_slots": int(os.environ.get("DXF_NODE_SLOTS", "2")),
        **config.pop("CELERY", {}),
    }
    app = Flask(__name__)
    app.config.from_mapping(DATABASE_URL=database_url, CELERY=celery_conf, **config)

    from shop_flask import db, dxf_tasks, orders

    dxf_tasks.register()
    celery_init_app(app)
    dxf_ext.init_app(app)  # app.extensions["dxf"]: the DXF of that Celery app
    db.init_app(app)
    app.register_blueprint(orders.bp)
    app.cli.add_command(dxf_cli)  # flask dxf ...
    return app
