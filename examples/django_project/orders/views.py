"""Submit from a view in the same transaction as the business row, and show progress."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from dxf_celery.contrib.django import get_dxf, submit_task
from dxf_celery.errors import TaskAlreadyExistsError, TaskNotFoundError
from dxf_celery.examples import noop
from orders.dxf_tasks import ORDER_REPORT
from orders.models import Order


class OrderRejected(Exception):
    """A business rule refused the order after the task was submitted: everything rolls back."""


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Body ``{"key": "o-1", "items": 3, "sleep": 0, "reject": false}``: the order row and its task, atomically."""
    body = json.loads(request.body or b"{}")
    key, items = str(body.get("key", "")), int(body.get("items", 1))
    try:
        with transaction.atomic():
            Order.objects.create(key=key, items=items)
            meta = noop.noop_meta(subtasks=items, sleep=float(body.get("sleep", 0)))
            task = submit_task(key, ORDER_REPORT, meta=meta)
            if body.get("reject"):
                raise OrderRejected(f"order {key!r} rejected")
    except OrderRejected as err:
        return JsonResponse({"error": str(err)}, status=422)
    except TaskAlreadyExistsError:
        return JsonResponse({"error": f"order {key!r} exists already"}, status=409)
    return JsonResponse({"key": task.key, "id": task.id, "state": task.state.value}, status=201)


@require_GET
def order_status(request: HttpRequest, key: str) -> JsonResponse:
    """The task's state and per-step progress; an unknown key is a 404 saying so."""
    dxf = get_dxf()
    try:
        task = dxf.get_task(key)
    except TaskNotFoundError:
        return JsonResponse({"error": f"no order task with key {key!r}"}, status=404)
    progress = dxf.get_task_progress(task.id).to_dict()
    error = str(task.error) if task.error is not None else None
    return JsonResponse({"key": task.key, "state": task.state.value, "error": error, "steps": progress["steps"]})
