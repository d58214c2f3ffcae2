"""Retrying storage calls with exponential backoff (DXF's ``handle.RunWithRetry``).

Executors and schedulers must survive a database restart: a transient error (lost
connection, deadlock, lock timeout) is retried with a growing pause, while a logical error
(a lost compare-and-set, a missing row) is raised at once because retrying cannot change it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dxf_celery.context import Context
from dxf_celery.errors import is_transient_error

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: DXF's framework SQL retry policy: 30 tries, 3 s doubling up to 30 s (about 14 minutes).
RETRY_SQL_TIMES = 30
RETRY_SQL_INTERVAL = 3.0
RETRY_SQL_MAX_INTERVAL = 30.0

#: The executors' policy (``taskexecutor.Intervals``): the same ~14 minutes before giving up,
#: but never more than 2 s between tries (the executor's check intervals), so work resumes
#: within about one interval of the database coming back instead of up to 30 s later.
RECOVERY_SQL_INTERVAL = 0.5
RECOVERY_SQL_MAX_INTERVAL = 2.0
RECOVERY_SQL_TIMES = 420


@dataclass(frozen=True)
class ExponentialBackoff:
    """``delay(0) = base``; each next delay is the previous times ``multiplier``, capped at ``maximum``."""

    base: float = RETRY_SQL_INTERVAL
    multiplier: float = 2.0
    maximum: float = RETRY_SQL_MAX_INTERVAL

    def delay(self, attempt: int) -> float:
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # Cap the exponent first so huge attempt numbers cannot overflow the float.
        value = self.base * self.multiplier ** min(attempt, 64)
        return min(value, self.maximum)


def run_with_retry(
    fn: Callable[[], T],
    *,
    ctx: Context | None = None,
    max_retry: int = RETRY_SQL_TIMES,
    backoff: ExponentialBackoff | None = None,
    is_retryable: Callable[[BaseException], bool] = is_transient_error,
    what: str = "",
) -> T:
    """Call ``fn`` up to ``max_retry`` times while it raises retryable errors.

    A non-retryable error is raised at once; after the last try the last error is raised.
    When ``ctx`` is cancelled during a pause, its cause is raised (the caller is shutting
    down, so waiting longer is pointless).
    """
    if max_retry < 1:
        raise ValueError(f"max_retry must be >= 1, got {max_retry}")
    policy = backoff if backoff is not None else ExponentialBackoff()
    for attempt in range(max_retry):
        try:
            return fn()
        except Exception as err:
            if not is_retryable(err) or attempt == max_retry - 1:
                raise
            pause = policy.delay(attempt)
            logger.warning(
                "%s failed with a transient error (try %d/%d), retrying in %.2fs: %s",
                what or getattr(fn, "__name__", "call"),
                attempt + 1,
                max_retry,
                pause,
                err,
            )
            if ctx is not None:
                if ctx.wait(pause):
                    cause = ctx.cause
                    assert cause is not None
                    raise cause from err
            else:
                time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def warn_misspelt_retry_hook(cls: type, *, right: str, wrong: str, side: str) -> None:
    """Warn when an Extension subclass defines the other side's spelling of its retry hook.

    DESIGN pins ``is_retryable_err`` on the scheduler Extension and ``is_retryable_error`` on
    the executor Extension; a method with the other spelling is never called, so the type's
    errors would silently stop being retried. A class that is both Extensions wants both
    names: bases declare theirs in ``_dxf_retry_hook``.
    """
    if wrong not in vars(cls):
        return
    if any(vars(base).get("_dxf_retry_hook") == wrong for base in cls.__mro__):
        return
    warnings.warn(
        f"{cls.__module__}.{cls.__qualname__} defines {wrong}(), which the {side} never calls: "
        f"the {side} Extension's hook is spelt {right}()",
        UserWarning,
        stacklevel=3,
    )


__all__ = [
    "RECOVERY_SQL_INTERVAL",
    "RECOVERY_SQL_MAX_INTERVAL",
    "RECOVERY_SQL_TIMES",
    "RETRY_SQL_INTERVAL",
    "RETRY_SQL_MAX_INTERVAL",
    "RETRY_SQL_TIMES",
    "ExponentialBackoff",
    "run_with_retry",
    "warn_misspelt_retry_hook",
]
