"""Where a SIGUSR1 lands in a prefork pool child, before, during and after a ``dxf.execute``.

Real signals to this process, routed the way a pool child set up by the worker routes them.
The pool's own SIGUSR1 handler (billiard's soft time limit) is stood in for by a recorder.
The fault pinned here came from CI: the Manager's cancel of a run that had just ended
reached the soft-time-limit handler while the child wrote its result, the worker read half
a message, and the node never started that task's executor again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from dxf_celery.proto import TaskState
from dxf_celery.worker import execution
from dxf_celery.worker.execution import ExecutionControl, note_task_starting
from dxf_celery.worker.names import EXECUTE_TASK

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")


class PoolHandler:
    """Stands in for billiard's soft-time-limit handler: counts the signals it gets."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.calls += 1


@pytest.fixture
def pool_handler() -> Iterator[PoolHandler]:
    saved_handler = signal.getsignal(signal.SIGUSR1)
    names = ("_child_phase", "_early_cancel", "_pool_sigusr1")
    saved = {name: getattr(execution, name) for name in names}
    handler = PoolHandler()
    signal.signal(signal.SIGUSR1, handler)  # as billiard does after worker_process_init
    try:
        yield handler
    finally:
        signal.signal(signal.SIGUSR1, saved_handler)
        for name, value in saved.items():
            setattr(execution, name, value)


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.01)  # the handler runs on the main thread at the next bytecode boundary


def _wait_requested(control: ExecutionControl) -> str | None:
    deadline = time.monotonic() + 5
    while control.requested is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return control.requested


def test_a_cancel_after_the_run_ended_never_reaches_the_pools_handler(pool_handler: PoolHandler) -> None:
    note_task_starting(EXECUTE_TASK, EXECUTE_TASK)
    with ExecutionControl(1, read_state=lambda: TaskState.RUNNING, use_signal=True) as control:
        _signal_self()
        assert _wait_requested(control) == "executor"
    assert pool_handler.calls == 0
    _signal_self()  # the Manager's late cancel, while the child writes the result or waits for work
    _signal_self()
    assert pool_handler.calls == 0


def test_another_task_after_an_executor_gets_the_pools_handler_back(pool_handler: PoolHandler) -> None:
    note_task_starting(EXECUTE_TASK, EXECUTE_TASK)
    with ExecutionControl(2, read_state=lambda: TaskState.RUNNING, use_signal=True):
        pass
    note_task_starting("app.user_task", EXECUTE_TASK)
    _signal_self()  # a soft time limit of the user's task
    assert pool_handler.calls == 1


def test_a_cancel_before_the_control_is_up_is_kept_for_it(pool_handler: PoolHandler) -> None:
    note_task_starting(EXECUTE_TASK, EXECUTE_TASK)
    _signal_self()  # the Manager cancels the request while the task body is still loading the task
    assert pool_handler.calls == 0
    with ExecutionControl(3, read_state=lambda: TaskState.PAUSING, use_signal=True) as control:
        assert _wait_requested(control) == "executor"


def test_a_cancel_kept_for_a_starting_run_does_not_reach_the_next_one(pool_handler: PoolHandler) -> None:
    note_task_starting(EXECUTE_TASK, EXECUTE_TASK)
    _signal_self()
    note_task_starting(EXECUTE_TASK, EXECUTE_TASK)  # that run never got its control up; a new one starts
    with ExecutionControl(4, read_state=lambda: TaskState.RUNNING, use_signal=True) as control:
        time.sleep(0.05)
        assert control.requested is None


def test_a_reverting_task_cancels_only_the_running_subtask(pool_handler: PoolHandler) -> None:
    note_task_starting(EXECUTE_TASK, EXECUTE_TASK)
    with ExecutionControl(5, read_state=lambda: TaskState.REVERTING, use_signal=True) as control:
        _signal_self()
        assert _wait_requested(control) == "subtask"
