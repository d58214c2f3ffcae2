"""The request class of ``dxf.execute``: tells the node's launcher when its executor really started."""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from dxf_celery.worker.launcher import tracker


class ExecuteRequest(Request):
    """Records the accepted request (worker main process) so its ``CeleryRunningExecutor`` can watch it finish.

    ``on_accepted`` is the one completion-path hook that Celery's per-task request subclass
    does not override; after it, the request stays in ``worker.state.active_requests``
    until it finished in any way, which is what ``CeleryRunningExecutor.done()`` checks.
    """

    def on_accepted(self, pid: Any, time_accepted: Any) -> None:
        super().on_accepted(pid, time_accepted)
        tracker.accepted(self.id, self)
