"""``dxf_celery.testing.wait_until``: the polling helper users' tests, ours and the bench share."""

from __future__ import annotations

import itertools

import pytest

from dxf_celery.testing import wait_until


def test_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_until(lambda: [n for n in [next(calls)] if n >= 3], 5, interval=0.001) == [3]


def test_a_timeout_names_what_was_awaited() -> None:
    with pytest.raises(TimeoutError, match="waiting for the node row"):
        wait_until(lambda: None, 0.01, what="the node row", interval=0.001)
