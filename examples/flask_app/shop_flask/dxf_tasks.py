"""Task types of the example (the bundled ``noop``: one subtask per order item)."""

from __future__ import annotations

from dxf_celery.examples import noop

#: The task type the orders blueprint submits.
ORDER_REPORT = noop.TASK_TYPE


def register() -> None:
    noop.register()
