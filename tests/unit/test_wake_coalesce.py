"""Coalesced scheduler wake-ups (``worker/coalesce.py``): fewer messages, the last write still woken.

The trailing send is driven by a fake timer, so nothing here depends on how fast the
machine is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable

import pytest

from dxf_celery.worker.coalesce import WakeCoalescer


class FakeTimer:
    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> None:
        self.armed.append((delay, fn))

    def fire(self) -> None:
        armed, self.armed = self.armed, []
        for _, fn in armed:
            fn()


def _coalescer(window: float = 60.0) -> tuple[WakeCoalescer, list[Hashable], FakeTimer]:
    sent: list[Hashable] = []
    timer = FakeTimer()
    return WakeCoalescer(sent.append, window, schedule=timer), sent, timer


def test_first_request_is_sent_at_once_and_a_burst_becomes_one_trailing_send() -> None:
    c, sent, timer = _coalescer()
    c.request("submit")
    assert sent == ["submit"]  # a lone submit is not delayed
    for _ in range(100):
        c.request("submit")
    assert sent == ["submit"] and len(timer.armed) == 1  # one trailing send armed for the rest
    assert 0 < timer.armed[0][0] <= 60.0
    timer.fire()
    assert sent == ["submit", "submit"]  # the last request is followed by a send
    assert timer.armed == []


def test_requests_after_the_trailing_send_are_covered_again() -> None:
    c, sent, timer = _coalescer()
    c.request("submit")
    c.request("submit")
    timer.fire()
    # The trailing send opened a new window: the next request is carried by another trailing one.
    c.request("submit")
    assert sent == ["submit", "submit"] and len(timer.armed) == 1
    timer.fire()
    assert sent == ["submit"] * 3


def test_keys_are_coalesced_apart() -> None:
    c, sent, timer = _coalescer()
    c.request("submit")
    c.request("cancel")
    c.request(("step-done", True))
    assert sent == ["submit", "cancel", ("step-done", True)]
    c.request("cancel")
    timer.fire()
    assert sent[-1] == "cancel" and len(sent) == 4


def test_window_zero_sends_every_request() -> None:
    c, sent, timer = _coalescer(window=0)
    for _ in range(3):
        c.request("submit")
    assert sent == ["submit"] * 3 and timer.armed == []


def test_a_forked_child_does_not_wait_for_the_parents_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    c, sent, _ = _coalescer()
    c.request("submit")
    c.request("submit")  # trailing armed in the "parent"
    monkeypatch.setattr(os, "getpid", lambda: -1)  # the child: that timer does not exist here
    c.request("submit")
    assert sent == ["submit", "submit"]  # sent at once, not swallowed by the parent's armed window


def test_flush_sends_the_armed_trailing_wakeups_at_once() -> None:
    c, sent, timer = _coalescer()
    c.request("submit")
    c.request("submit")
    c.request("cancel")
    c.flush()  # what interpreter exit does: the trailing "submit" is not lost with its daemon timer
    assert sent == ["submit", "cancel", "submit"]
    c.flush()
    assert len(sent) == 3  # nothing armed any more
    timer.fire()  # the timer firing late sends a harmless duplicate
    assert sent[-1] == "submit"
