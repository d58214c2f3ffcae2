"""The pieces behind a worker's startup wait and shutdown bound, without starting a worker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from helpers.celery_apps.servers import free_port

from dxf_celery.settings import DXFConfigError, DXFSettings
from dxf_celery.worker.shutdown import COLD_BOUND, shutdown_bound
from dxf_celery.worker.startup import DatabaseUnavailableError, masked_url, wait_for_database


def test_a_reachable_database_is_used_at_once(tmp_path: Path) -> None:
    prepared: list[str] = []
    attempts = wait_for_database(
        f"sqlite:///{tmp_path / 'x.db'}", retries=3, interval=0.01, prepare=lambda: prepared.append("migrated")
    )
    assert attempts == 1 and prepared == ["migrated"]


def test_an_unreachable_database_is_retried_then_one_line_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+psycopg://dxf:s3cret@127.0.0.1:{free_port()}/dxf"
    pauses: list[float] = []
    with caplog.at_level(logging.WARNING), pytest.raises(DatabaseUnavailableError) as info:
        wait_for_database(url, retries=3, interval=0.5, sleep=pauses.append)
    assert pauses == [0.5, 0.5]
    retries = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(retries) == 2 and "retry 1/2" in retries[0] and "retry 2/2" in retries[1]
    message = str(info.value)
    assert "\n" not in message and "after 3 attempts" in message and "dxf_database_url" in message
    assert "s3cret" not in message + "".join(retries) and "***" in message


def test_a_database_that_comes_back_is_used(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky_prepare() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("database starting up")

    attempts = wait_for_database(
        f"sqlite:///{tmp_path / 'x.db'}", retries=5, interval=0.01, prepare=flaky_prepare, sleep=lambda _: None
    )
    assert attempts == 3


def test_an_unusable_url_fails_at_once() -> None:
    pauses: list[float] = []
    with pytest.raises(DatabaseUnavailableError, match="cannot be used"):
        wait_for_database("nosuchdialect://x/y", retries=5, interval=1, sleep=pauses.append)
    assert pauses == []


def test_masked_url_hides_the_password() -> None:
    assert masked_url("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"


def test_shutdown_bounds() -> None:
    assert shutdown_bound("Warm", 60) == 60
    assert shutdown_bound("Cold", 60) == COLD_BOUND
    assert shutdown_bound("Cold", 3) == 3
    assert shutdown_bound("Warm", 0) is None


def test_startup_and_shutdown_settings_are_validated() -> None:
    settings = DXFSettings.from_conf({})
    assert (settings.database_connect_retries, settings.database_connect_interval, settings.shutdown_timeout) == (
        30,
        2.0,
        60.0,
    )
    with pytest.raises(DXFConfigError, match="dxf_database_connect_retries"):
        DXFSettings.from_conf({"dxf_database_connect_retries": 0})
    with pytest.raises(DXFConfigError, match="dxf_database_connect_interval"):
        DXFSettings.from_conf({"dxf_database_connect_interval": 0})
    with pytest.raises(DXFConfigError, match="dxf_shutdown_timeout"):
        DXFSettings.from_conf({"dxf_shutdown_timeout": -1})


def test_the_drain_grace_fits_inside_the_shutdown_watchdog() -> None:
    """The drain ends before ``dxf_shutdown_timeout`` kills the worker: cancel grace and a margin are left."""
    assert DXFSettings.from_conf({}).effective_drain_grace == 30.0  # 60 s watchdog, 1 s cancel grace
    assert DXFSettings.from_conf({"dxf_shutdown_timeout": 20}).effective_drain_grace == 14.0
    assert DXFSettings.from_conf({"dxf_shutdown_timeout": 3}).effective_drain_grace == 0.0
    assert DXFSettings.from_conf({"dxf_shutdown_timeout": 0, "dxf_drain_grace": 900}).effective_drain_grace == 900
    assert DXFSettings.from_conf({"dxf_drain_grace": 0}).effective_drain_grace == 0.0
    with pytest.raises(DXFConfigError, match="dxf_drain_grace"):
        DXFSettings.from_conf({"dxf_drain_grace": -1})


def _requires_closure(step: Any) -> set[str]:
    """Every step ``step`` waits for, directly or not (as Celery's blueprint graph resolves them)."""
    from celery.utils.imports import symbol_by_name

    seen: set[str] = set()
    todo = list(step.requires)
    while todo:
        dep = symbol_by_name(todo.pop()) if isinstance(todo[-1], str) else todo.pop()
        if dep.name not in seen:
            seen.add(dep.name)
            todo.extend(dep.requires)
    return seen


def test_the_tick_consumer_starts_after_mingle() -> None:
    """The tick consumer must declare that it comes after Mingle; Celery orders the rest by hash.

    Started before Mingle, it shares the connection mingle drains until one quiet second, and
    ticks coming more often than that kept the worker at ``mingle: searching for neighbors``
    for ever (issue 10).
    """
    from celery.worker.consumer.mingle import Mingle
    from celery.worker.consumer.tasks import Tasks

    from dxf_celery.worker.bootsteps import DXFSchedulerTicks

    needs = _requires_closure(DXFSchedulerTicks)
    assert Mingle.name in needs and Tasks.name in needs, needs
