"""The bench's real processes: Celery workers and beat on ``bench.app``, procrastinate workers.

Every process runs in its own session so that ``close()`` can always take the whole group
down (main process and pool children). Readiness is read from SQL (the node rows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dxf_celery.testing import wait_until

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout`` s."""
    return wait_until(predicate, timeout, what=what, interval=interval)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of ``pid`` (``VmHWM`` of /proc/<pid>/status), KiB; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm(pid: int) -> None:
    """Start a new peak (``echo 5 > /proc/<pid>/clear_refs``); silently nothing if not allowed."""
    for target in [pid, *children(pid)]:
        try:
            Path(f"/proc/{target}/clear_refs").write_text("5")
        except OSError:
            pass


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


class Cluster:
    """Processes of one stage of the bench, all with the same environment."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = dict(os.environ)
        self.env.update(env)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env["DXF_BENCH_DIR"] = str(run_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.run_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=str(self.run_dir), env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def worker(self, name: str, concurrency: int) -> None:
        self.spawn(
            name,
            [
                *(str(BIN / "celery"), "-A", "bench.app", "worker", "-n", name, "-P", "prefork"),
                *("-c", str(concurrency), "-l", "warning"),
            ],
        )

    def beat(self) -> None:
        self.spawn("beat", [str(BIN / "celery"), "-A", "bench.app", "beat", "-s", str(self.run_dir / "beat-schedule")])

    def procrastinate_worker(self, name: str) -> None:
        self.spawn(
            name,
            [
                *(str(BIN / "procrastinate"), "--app=bench.procrastinate_app.app", "--log-level", "warning"),
                *("worker", "--concurrency", "1", "--name", name),
            ],
        )

    def wait_nodes(self, task_manager: Any, names: set[str], timeout: float = 120) -> None:
        def ready() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited early:\n{log}")
            return names <= {n.id for n in task_manager.get_all_nodes()}

        wait_for(ready, timeout, f"nodes {sorted(names)} to register", interval=0.1)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
