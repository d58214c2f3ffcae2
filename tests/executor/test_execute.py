"""execute module: BaseStepExecutor defaults and SubtaskSummary arithmetic and JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from dxf_celery.context import Context
from dxf_celery.proto import StepResource
from dxf_celery.taskexecutor.execute import BaseStepExecutor, SubtaskSummary

T0 = datetime(2026, 1, 1, 12, 0, 0)


def summary_with(points: list[tuple[int, int]]) -> SubtaskSummary:
    """points: (seconds after T0, bytes)."""
    s = SubtaskSummary()
    for sec, b in points:
        s.bytes = b
        s.update(T0 + timedelta(seconds=sec))
    return s


def test_base_step_executor_defaults() -> None:
    e = BaseStepExecutor()
    ctx = Context.background()
    e.init(ctx)
    e.cleanup(ctx)
    e.reset_summary()
    assert e.realtime_summary() is None
    assert e.get_step() == -1
    e.set_resource(StepResource(2, 10))
    assert e.get_resource() == StepResource(2, 10)
    with pytest.raises(NotImplementedError):
        e.task_meta_modified(ctx, b"{}")
    with pytest.raises(NotImplementedError):
        e.resource_modified(ctx, StepResource(1, 1))


def test_update_keeps_last_five_points_and_reset_zeroes() -> None:
    s = summary_with([(i, i * 10) for i in range(8)])
    assert [p.bytes for p in s.progresses] == [30, 40, 50, 60, 70]
    s.add(rows=3, bytes=5, read_bytes=7, gets=1, puts=2)
    s.reset(T0)
    assert (s.row_count, s.bytes, s.read_bytes, s.get_request_count, s.put_request_count) == (0, 0, 0, 0, 0)
    assert len(s.progresses) == 1 and s.progresses[0].update_time == T0


def test_speed_in_time_range() -> None:
    s = summary_with([(0, 0), (10, 100), (20, 300)])
    # whole span: 300 bytes over 20 s
    assert s.speed_in_time_range(T0 + timedelta(seconds=20), 20) == pytest.approx(15.0)
    # last 5 s: half of the second segment (200 bytes / 10 s) -> 100 bytes / 5 s
    assert s.speed_in_time_range(T0 + timedelta(seconds=20), 5) == pytest.approx(20.0)
    # window [5, 15]: half of segment one (50) + half of segment two (100) over 10 s
    assert s.speed_in_time_range(T0 + timedelta(seconds=15), 10) == pytest.approx(15.0)
    # window [10, 30] extends past the last point: segment two (200 bytes) over the full 20 s
    assert s.speed_in_time_range(T0 + timedelta(seconds=30), 20) == pytest.approx(10.0)
    # outside the points' span, or fewer than two points
    assert s.speed_in_time_range(T0 - timedelta(seconds=1), 5) == 0.0
    assert s.speed_in_time_range(T0 + timedelta(seconds=100), 5) == 0.0
    assert summary_with([(0, 10)]).speed_in_time_range(T0, 5) == 0.0


def test_json_uses_dxf_field_names_and_round_trips() -> None:
    s = summary_with([(0, 1), (3, 5)])
    s.add(rows=4, read_bytes=2, gets=3, puts=1)
    data = json.loads(s.to_json())
    assert set(data) == {"row_count", "bytes", "read_bytes", "get_request_count", "put_request_count", "progresses"}
    assert set(data["progresses"][0]) == {"row_count", "bytes", "update_time"}
    back = SubtaskSummary.from_json(s.to_json())
    assert back.to_dict() == s.to_dict()
