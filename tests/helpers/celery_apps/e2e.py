"""One end-to-end test's world: a Celery app and DXF client in the test process, the worker
and beat processes it starts, and the run log the ``e2e`` task type writes.

Shared by the end-to-end suites (celery, quiet logs, dashboard) so none imports another's test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from dxf_celery import DXF
from dxf_celery.proto import SubtaskState
from helpers.celery_apps.dxf_app import create_app
from helpers.celery_apps.harness import CeleryProcesses, RunEvent, read_record
from helpers.celery_apps.types import e2e_meta


@dataclass
class E2E:
    app: Celery
    dxf: DXF
    procs: CeleryProcesses
    record: Path

    def events(self) -> list[RunEvent]:
        return read_record(self.record)

    def meta(self, **kw: object) -> bytes:
        return e2e_meta(str(self.record), **kw)  # type: ignore[arg-type]

    def hold(self, name: str) -> Path:
        """A release file: subtasks with ``meta(hold=...)`` run until :func:`release` creates it."""
        return self.record.with_name(f"release-{name}")

    def running_subtasks(self, task_id: int, exec_id: str | None = None) -> list[object]:
        return [
            s
            for s in self.dxf.get_subtasks(task_id)
            if s.state == SubtaskState.RUNNING and (exec_id is None or s.exec_id == exec_id)
        ]


def make_e2e(tmp_path: Path, broker: str, db_url: str, fs_dir: str | None = None) -> Iterator[E2E]:
    """Build the world, hand it to the test, and leave no process behind (logs printed for failures)."""
    app, dxf = create_app(broker=broker, db_url=db_url, fs_dir=fs_dir)
    env = {"DXF_E2E_BROKER": broker, "DXF_E2E_DB_URL": db_url}
    if fs_dir:
        env["DXF_E2E_FS_DIR"] = fs_dir
    procs = CeleryProcesses(tmp_path, env, dxf.task_manager)
    try:
        yield E2E(app, dxf, procs, tmp_path / "runs.log")
    finally:
        procs.close()
        print(procs.logs())  # pytest shows it only when the test failed
        dxf.state.dispose()
        app.close()
