"""The planner guards without a database: what counts as a plan, and the retry bound."""

from __future__ import annotations

from datetime import datetime

import pytest

from dxf_celery.errors import InvalidPlanError
from dxf_celery.proto import Task, TaskState
from dxf_celery.retry import ExponentialBackoff
from dxf_celery.scheduler.planning import PlanningRetries, validate_plan


def _task(meta: object = b"{}") -> Task:
    return Task(
        id=7, key="k", type="csv", state=TaskState.PENDING, step=-1, create_time=datetime(2026, 1, 1), meta=meta
    )  # type: ignore[arg-type]


def test_a_plan_is_a_list_of_bytes() -> None:
    assert validate_plan(_task(), 1, [b"a", bytearray(b"b"), memoryview(b"c")]) == [b"a", b"b", b"c"]
    assert validate_plan(_task(), 1, []) == []
    assert validate_plan(_task(), 1, (b"x",)) == [b"x"]


@pytest.mark.parametrize(
    ("plan", "said"),
    [
        (None, "returned NoneType None"),
        ("abc", "returned str 'abc'"),
        (b"abc", "returned bytes b'abc'"),
        ([b"ok", "no"], "item 1 is str 'no'"),
        (iter([b"x"]), "returned list_iterator"),
        (["x" * 500], "item 0 is str 'xxxxxxxx"),
    ],
)
def test_garbage_is_named(plan: object, said: str) -> None:
    with pytest.raises(InvalidPlanError) as info:
        validate_plan(_task(), 2, plan)
    message = str(info.value)
    assert message.startswith("task type 'csv': on_next_subtasks_batch for step 2")
    assert said in message
    assert len(message) < 300  # a short repr, not the whole value


def test_task_meta_must_stay_bytes() -> None:
    with pytest.raises(InvalidPlanError, match=r"set task\.meta to dict"):
        validate_plan(_task({"a": 1}), 1, [b"x"])


def test_retries_are_bounded_and_back_off() -> None:
    now = [0.0]
    r = PlanningRetries(2, ExponentialBackoff(1.0, 2.0, 3.0), clock=lambda: now[0])
    assert r.may_try(7, 1)
    assert r.failed(7, 1)
    assert not r.may_try(7, 1)  # 1 s pause
    now[0] = 1.0
    assert r.may_try(7, 1)
    assert r.failed(7, 1) and r.failures(7) == 2
    now[0] = 2.5
    assert not r.may_try(7, 1)  # 2 s pause
    assert r.may_try(7, 2)  # another step starts from zero
    now[0] = 3.0
    assert not r.failed(7, 1)  # the third failure in a row: give up
    assert r.failures(7) == 0
    assert r.failed(7, 1)
    r.forget(7)
    assert r.may_try(7, 1) and r.failures(7) == 0
