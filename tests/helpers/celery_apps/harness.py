"""Start and stop real ``celery worker`` / ``celery beat`` processes for the end-to-end tests.

Each process runs in its own session (process group) so a test can SIGKILL a whole worker
(main process and pool children) and the finalizer can always clean up, even after a
failure. Readiness is read from SQL (the node row a worker registers), not from logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from dxf_celery.storage import TaskManager
from helpers.paths import REPO_ROOT
from helpers.waiting import wait_until

ROOT = REPO_ROOT
CELERY = str(Path(sys.executable).with_name("celery"))
APP = "helpers.celery_apps.dxf_app"

T = TypeVar("T")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class CeleryProcesses:
    """The worker and beat processes of one test; ``close()`` leaves none behind."""

    tmp: Path
    env: dict[str, str]
    task_manager: TaskManager
    procs: dict[str, Proc] = field(default_factory=dict)

    def _env(self, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env or {})
        env["PYTHONPATH"] = str(ROOT / "tests") + os.pathsep + str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [CELERY, "-A", APP, *args],
                cwd=str(self.tmp),
                env=self._env(extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_worker(
        self,
        name: str,
        *,
        pool: str = "prefork",
        concurrency: int = 3,
        slots: int = 2,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        wait: bool = True,
    ) -> Proc:
        env = {"DXF_E2E_SLOTS": str(slots), **(extra_env or {})}
        args = ["worker", "-n", name, "-P", pool, "-c", str(concurrency), "-l", "info", *extra_args]
        proc = self._spawn(name, args, env)
        if wait:
            self.wait_node(name)
        return proc

    def wait_node(self, name: str, timeout: float = 60.0) -> None:
        def registered() -> bool:
            if not self.procs[name].alive():
                raise AssertionError(f"worker {name} exited early:\n{self.procs[name].log_text()[-3000:]}")
            return any(n.id == name for n in self.task_manager.get_all_nodes())

        wait_until(registered, timeout, what=f"worker {name} to register its node")

    def celery(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A helpers.celery_apps.dxf_app ARGS`` (e.g. ``dxf list``) to its end, as a user would."""
        return subprocess.run(
            [CELERY, "-A", APP, *args],
            cwd=str(self.tmp),
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_beat(self, name: str = "beat") -> Proc:
        return self._spawn(name, ["beat", "-s", str(self.tmp / f"{name}-schedule"), "-l", "warning"])

    def start_flower(
        self, *, broker: str, port: int, result_backend: str | None = None, extra_args: tuple[str, ...] = ()
    ) -> Proc:
        """Flower on 127.0.0.1:``port`` (in-memory state, HTTP API open for the test); waits for its health check.

        ``--broker`` (and ``--result-backend``) are Celery's global options, so Flower reads the
        test's broker whatever the app module would pick.
        """
        options = [f"--broker={broker}"] + ([f"--result-backend={result_backend}"] if result_backend else [])
        args = [*options, "flower", "--address=127.0.0.1", f"--port={port}", "--persistent=False", *extra_args]
        proc = self._spawn("flower", args, {"FLOWER_UNAUTHENTICATED_API": "true"})

        def healthy() -> bool:
            if not proc.alive():
                raise AssertionError(f"flower exited early:\n{proc.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=5) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(healthy, 60, 0.1, what="flower to answer its health check")
        return proc

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM to the main process) and wait for the exit."""
        proc = self.procs[name]
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
                proc.popen.wait(10)
                raise AssertionError(f"{name} did not stop within {timeout}s:\n{proc.log_text()[-3000:]}") from None
        proc.signal(signal.SIGKILL)  # stray pool children, if any

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: main process and pool children die at once."""
        proc = self.procs[name]
        proc.signal(signal.SIGKILL)
        proc.popen.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            proc.signal(signal.SIGKILL)
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log_text()[-4000:]}" for p in self.procs.values())


@dataclass(frozen=True)
class RunEvent:
    kind: str
    task_id: int
    step: int
    ordinal: int
    exec_id: str
    pid: int
    at: float
    outcome: str = ""


def read_record(path: Path) -> list[RunEvent]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 7:
            continue
        events.append(
            RunEvent(
                parts[0],
                int(parts[1]),
                int(parts[2]),
                int(parts[3]),
                parts[4],
                int(parts[5]),
                float(parts[6]),
                parts[7] if len(parts) > 7 else "",
            )
        )
    return events


def max_parallel_by_node(events: list[RunEvent]) -> dict[str, int]:
    """The most subtasks that ran at the same time on each node (from start/end pairs)."""
    timeline: dict[str, list[tuple[float, int]]] = {}
    for ev in events:
        timeline.setdefault(ev.exec_id, []).append((ev.at, 1 if ev.kind == "start" else -1))
    result = {}
    for node, points in timeline.items():
        current = peak = 0
        for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
            current += delta
            peak = max(peak, current)
        result[node] = peak
    return result
