"""run_with_retry: transient errors retried with backoff, others raised at once."""

from __future__ import annotations

import threading

import pytest

from dxf_celery.context import Context
from dxf_celery.errors import (
    StorageDataError,
    StorageSchemaError,
    StorageUnavailableError,
    TaskNotFoundError,
    is_transient_error,
)
from dxf_celery.retry import ExponentialBackoff, run_with_retry
from dxf_celery.storage import is_transient_error as storage_is_transient_error

FAST = ExponentialBackoff(0.001, 2.0, 0.004)


def test_backoff_doubles_up_to_the_cap() -> None:
    b = ExponentialBackoff(3.0, 2.0, 30.0)
    assert [b.delay(i) for i in range(6)] == [3.0, 6.0, 12.0, 24.0, 30.0, 30.0]
    assert b.delay(10_000) == 30.0
    with pytest.raises(ValueError):
        b.delay(-1)


def test_transient_errors_are_retried_until_success() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StorageUnavailableError("db down")
        return "ok"

    assert run_with_retry(flaky, max_retry=5, backoff=FAST) == "ok"
    assert len(calls) == 3


def test_non_transient_error_is_raised_at_once() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise TaskNotFoundError()

    with pytest.raises(TaskNotFoundError):
        run_with_retry(missing, max_retry=5, backoff=FAST)
    assert len(calls) == 1


def test_last_error_after_max_retries() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError(f"attempt {len(calls)}")

    with pytest.raises(ConnectionError, match="attempt 4"):
        run_with_retry(down, max_retry=4, backoff=FAST)


def test_cancelled_context_stops_the_wait() -> None:
    ctx = Context.background()
    started = threading.Event()

    def down() -> None:
        started.set()
        raise ConnectionError("down")

    threading.Thread(target=lambda: (started.wait(), ctx.cancel(RuntimeError("shutting down"))), daemon=True).start()
    with pytest.raises(RuntimeError, match="shutting down"):
        run_with_retry(down, ctx=ctx, max_retry=30, backoff=ExponentialBackoff(60.0, 2.0, 60.0))


def test_custom_classifier_and_bad_arguments() -> None:
    calls = []

    def f() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("x")
        return 7

    assert run_with_retry(f, is_retryable=lambda e: isinstance(e, KeyError), backoff=FAST) == 7
    with pytest.raises(ValueError):
        run_with_retry(f, max_retry=0)


@pytest.mark.parametrize(
    ("err", "transient"),
    [
        (StorageUnavailableError("db down"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("slow"), True),
        (StorageSchemaError("run the migration"), False),
        (StorageDataError("value too long"), False),
        (TaskNotFoundError(), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors_are_told_from_the_dxf_errors_alone(err: BaseException, transient: bool) -> None:
    """The core classifies what storage raises without importing storage (or a driver)."""
    assert is_transient_error(err) is transient
    # The storage-side classifier agrees on every error the TaskManager lets out.
    assert storage_is_transient_error(err) is transient


def test_executor_policy_resumes_within_an_interval_but_gives_up_as_late_as_dxf() -> None:
    """After an outage an executor's next try is never further off than its own check
    intervals (DXF's 3 -> 6 -> 12 -> 24 s made work resume ~15 s late after 30 s down),
    while the whole budget stays DXF's ~14 minutes, for the writes that must not give up."""
    from dxf_celery.retry import RETRY_SQL_TIMES
    from dxf_celery.taskexecutor import Intervals

    iv = Intervals()
    backoff = iv.sql_backoff()
    pauses = [backoff.delay(i) for i in range(iv.sql_retry_times - 1)]
    longest_check = max(iv.check_balance, iv.max_subtask_check, iv.heartbeat)
    assert max(pauses) <= longest_check
    dxf = ExponentialBackoff()
    assert sum(pauses) >= sum(dxf.delay(i) for i in range(RETRY_SQL_TIMES - 1))
