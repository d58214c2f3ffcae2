"""A blueprint: submit an order and its task in one transaction, show the task's progress."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from sqlalchemy import insert

from dxf_celery.contrib.sqla_tx import submit_task_in
from dxf_celery.errors import TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.examples import noop
from shop_flask import db
from shop_flask.dxf_tasks import ORDER_REPORT

bp = Blueprint("orders", __name__, url_prefix="/orders")


class OrderRejected(Exception):
    """A business rule refused the order after the task was submitted: everything rolls back."""


@bp.post("/")
def create_order() -> tuple[dict[str, Any], int]:
    body = request.get_json(silent=True) or {}
    key, items = str(body.get("key", "")), int(body.get("items", 1))
    dxf = current_app.extensions["dxf"]
    try:
        with db.engine().begin() as conn:
            conn.execute(insert(db.orders).values(key=key, items=items))
            meta = noop.noop_meta(subtasks=items, sleep=float(body.get("sleep", 0)))
            task = submit_task_in(conn, dxf, key, ORDER_REPORT, meta=meta)
            if body.get("reject"):
                raise OrderRejected(f"order {key!r} rejected")
    except OrderRejected as err:
        return {"error": str(err)}, 422
    except TaskAlreadyExistsError:
        return {"error": f"order {key!r} exists already"}, 409
    return {"key": task.key, "id": task.id, "state": task.state.value}, 201


@bp.get("/<key>")
def order_status(key: str) -> tuple[dict[str, Any], int]:
    dxf = current_app.extensions["dxf"]
    task = dxf.get_task(key)
    progress = dxf.get_task_progress(task.id).to_dict()
    error = str(task.error) if task.error is not None else None
    return {"key": task.key, "state": task.state.value, "error": error, "steps": progress["steps"]}, 200


@bp.errorhandler(TaskNotFoundError)
def unknown_task(err: TaskNotFoundError) -> tuple[dict[str, Any], int]:
    """An unknown key is a 404 that says so (not a 500)."""
    return {"error": str(err)}, 404
