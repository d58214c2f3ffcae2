"""The names of the Celery tasks DXF registers (one home, read by the app, the launcher and the wiring)."""

from __future__ import annotations

#: Runs one task executor in the node's pool (routed to the node's own queue).
EXECUTE_TASK = "dxf.execute"
#: A scheduler tick (beat) or wake-up (a user action); the node's main process consumes it.
SCHEDULE_TASK = "dxf.schedule"
#: Reason of the wake-up an executor sends when its node ran the last live subtask of a step.
STEP_DONE = "step-done"
