"""Task types of this app, imported by DXFConfig in the web process and in every worker.

The example uses dxf-celery's bundled ``noop`` type: one subtask per order item, each sleeping
``sleep`` seconds. A real project registers its own types here (see docs/task-types.md).
"""

from __future__ import annotations

from dxf_celery.examples import noop

noop.register()

#: The task type the views submit.
ORDER_REPORT = noop.TASK_TYPE
