"""The executor's progress look stretches with its cost: a task of 100k subtasks is not re-read every second."""

from __future__ import annotations

from dxf_celery.worker.events import COST_SHARE, progress_period


def test_a_cheap_read_keeps_the_configured_period() -> None:
    assert progress_period(1.0, 0.002) == 1.0


def test_a_costly_read_stretches_the_period_to_bound_its_share() -> None:
    assert progress_period(1.0, 0.4) == 0.4 * COST_SHARE
    assert 0.4 / progress_period(1.0, 0.4) <= 0.05
