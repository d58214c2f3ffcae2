"""What ``DXF(app)`` adds for operators: quiet scheduler ticks and the optional worker metrics endpoint.

Kept apart from the worker wiring so that a process without ``prometheus_client`` (the
``dashboard`` extra) still runs: the metrics module is imported only when a worker sets
``dxf_metrics_port``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import signals

from dxf_celery.worker import quiet_logs

if TYPE_CHECKING:
    from celery import Celery

    from dxf_celery.worker.state import DXFState

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_connected = False


def install(app: Celery, state: DXFState, beat_entry: str) -> None:
    """Demote the beat entry's per-tick line to debug; start worker metrics when a worker is ready."""
    global _connected
    quiet_logs.install(beat_entry)
    with _lock:
        if _connected:
            return
        _connected = True
    signals.worker_ready.connect(_on_worker_ready, weak=False)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    from dxf_celery.worker.node import find_runtime
    from dxf_celery.worker.state import get_state

    app = getattr(sender, "app", None)
    hostname = getattr(sender, "hostname", None)
    if app is None or not hostname:
        return
    try:
        state = get_state(app)
    except Exception:
        return
    if state.settings.metrics_port <= 0:
        return
    runtime = find_runtime(hostname)
    if runtime is None:
        return
    try:
        from dxf_celery.metrics import start_worker_metrics
    except ImportError as err:
        logger.warning("dxf_metrics_port is set but %s; pip install 'dxf-celery[dashboard]'", err)
        return
    start_worker_metrics(state, runtime)


__all__ = ["install"]
