"""``install(app, state)``: everything ``DXF(app)`` adds to a Celery app, in one place."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import signals

from dxf_celery.worker import control as _control  # noqa: F401  (registers the commands)
from dxf_celery.worker import observability, shutdown
from dxf_celery.worker.bootsteps import DXFNodeStep, DXFSchedulerTicks
from dxf_celery.worker.execution import install_drain_handler, note_task_starting
from dxf_celery.worker.launcher import tracker
from dxf_celery.worker.names import EXECUTE_TASK, SCHEDULE_TASK
from dxf_celery.worker.node import NodeRuntime, find_runtime, runtimes
from dxf_celery.worker.tasks import register_tasks

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.worker.state import DXFState

logger = logging.getLogger(__name__)

BEAT_ENTRY = "dxf-scheduler"

_signals_lock = threading.Lock()
_signals_connected = False


def install(app: Celery, state: DXFState) -> None:
    register_tasks(app, state)
    app.steps["worker"].add(DXFNodeStep)
    app.steps["consumer"].add(DXFSchedulerTicks)
    _connect_signals()
    observability.install(app, state, BEAT_ENTRY)

    def add_beat_entry(**_: Any) -> None:
        settings = state.settings
        if not settings.beat:
            return
        queue = settings.scheduler_queue
        schedule = dict(app.conf.beat_schedule or {})
        schedule[BEAT_ENTRY] = {
            "task": SCHEDULE_TASK,
            "schedule": settings.scheduler_interval,
            "kwargs": {"reason": "beat"},
            "options": {
                "queue": queue,
                "exchange": queue,
                "routing_key": queue,
                # A tick is worth nothing late: never let them pile up while workers are down.
                "expires": max(2 * settings.scheduler_interval, 2.0),
                "ignore_result": True,
            },
        }
        app.conf.beat_schedule = schedule

    if getattr(app, "configured", False):
        add_beat_entry()
    else:
        app.on_after_configure.connect(add_beat_entry, weak=False)


def _connect_signals() -> None:
    global _signals_connected
    with _signals_lock:
        if _signals_connected:
            return
        _signals_connected = True
    signals.task_received.connect(_on_task_received, weak=False)
    signals.task_revoked.connect(_on_task_revoked, weak=False)
    signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
    signals.worker_process_init.connect(_on_worker_process_init, weak=False)


def _on_worker_process_init(**_: Any) -> None:
    install_drain_handler()
    signals.task_prerun.connect(_on_task_prerun_in_child, weak=False)


def _on_task_prerun_in_child(sender: Any = None, **_: Any) -> None:
    note_task_starting(str(getattr(sender, "name", "")), EXECUTE_TASK)


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is not None and getattr(request, "task_name", None) == EXECUTE_TASK:
        tracker.received(request.id)


def _on_task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        tracker.finished(str(task_id))


def _on_worker_shutting_down(sig: Any = None, how: Any = None, **_: Any) -> None:
    # Called from a signal handler: hand the work to threads, take no lock here.
    cold = str(how or "Warm").lower() == "cold"
    for runtime in list(runtimes.values()):
        threading.Thread(target=runtime.begin_shutdown, args=(cold,), name="dxf-shutdown", daemon=True).start()
        threading.Thread(
            target=_arm_watchdog, args=(runtime, str(how or "Warm")), name="dxf-shutdown-arm", daemon=True
        ).start()


def _arm_watchdog(runtime: NodeRuntime, how: str) -> None:
    bound = shutdown.shutdown_bound(how, runtime.settings.shutdown_timeout)
    if bound is not None:
        shutdown.arm(bound, hostname=runtime.nodename, cleanup=runtime.remove_node)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None)
    runtime = find_runtime(hostname) if hostname else None
    if runtime is not None:
        runtime.remove_node()
