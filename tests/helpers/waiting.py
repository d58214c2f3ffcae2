"""The one way tests wait: poll a condition until it holds, with a generous timeout.

Tests wait for states (a row, a log line, a process gone), never for durations; a timeout
here is a failure that names what was awaited, not a measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dxf_celery import testing

T = TypeVar("T")

#: Long enough for a loaded 2-core machine; a passing test never waits it out.
DEFAULT_TIMEOUT = 60.0


def wait_until(
    predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value (a timeout fails the test)."""
    try:
        return testing.wait_until(predicate, timeout, what=what, interval=interval)
    except TimeoutError as err:
        raise AssertionError(str(err)) from None
