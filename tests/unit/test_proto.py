"""proto: states and steps, rank order, runtime slots, JSON round trips, resources."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from dxf_celery.proto import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    NORMAL_PRIORITY,
    STEP_DONE,
    STEP_INIT,
    ExtraParams,
    Modification,
    ModificationType,
    ModifyParam,
    NodeResource,
    StepResource,
    StoredError,
    Subtask,
    SubtaskState,
    Task,
    TaskBase,
    TaskState,
    is_cancelled_error,
    serialize_error,
    validate_priority,
)

T0 = datetime(2026, 1, 1, 12, 0, 0)


def _task(id: int, priority: int = NORMAL_PRIORITY, age: float = 0.0, **kw: object) -> TaskBase:
    return TaskBase(
        id=id,
        key=f"k{id}",
        type="t",
        state=kw.pop("state", TaskState.RUNNING),  # type: ignore[arg-type]
        step=kw.pop("step", 1),  # type: ignore[arg-type]
        priority=priority,
        create_time=T0 - timedelta(seconds=age),
        **kw,  # type: ignore[arg-type]
    )


def test_constants_and_state_values() -> None:
    assert (STEP_INIT, STEP_DONE) == (-1, -2)
    assert (MIN_PRIORITY, NORMAL_PRIORITY, MAX_PRIORITY) == (1, 512, 1024)
    assert [s.value for s in TaskState] == [
        "pending",
        "running",
        "succeed",
        "failed",
        "reverting",
        "awaiting-resolution",
        "reverted",
        "cancelling",
        "pausing",
        "paused",
        "resuming",
        "modifying",
    ]
    assert [s.value for s in SubtaskState] == ["pending", "running", "succeed", "failed", "canceled", "paused"]
    assert str(TaskState.AWAITING_RESOLUTION) == "awaiting-resolution"
    assert TaskState("modifying") is TaskState.MODIFYING


def test_rank_order() -> None:
    high = _task(9, priority=1)
    old = _task(5, age=60)
    same_time_low_id = _task(3)
    same_time_high_id = _task(4)
    tasks = [same_time_high_id, high, same_time_low_id, old]
    assert [t.id for t in sorted(tasks, key=TaskBase.rank_key)] == [9, 5, 3, 4]
    assert high.compare(old) < 0 and old.compare(high) > 0
    assert same_time_low_id.compare(same_time_high_id) < 0
    assert same_time_low_id.compare(_task(3)) == 0


@pytest.mark.parametrize(
    ("state", "done"),
    [(TaskState.SUCCEED, True), (TaskState.REVERTED, True), (TaskState.FAILED, True)]
    + [(s, False) for s in TaskState if s not in (TaskState.SUCCEED, TaskState.REVERTED, TaskState.FAILED)],
)
def test_task_is_done(state: TaskState, done: bool) -> None:
    assert _task(1, state=state).is_done() is done


def test_subtask_is_done() -> None:
    def sub(state: SubtaskState) -> Subtask:
        return Subtask(id=1, task_id=1, step=1, type="t", state=state, exec_id="n", ordinal=1)

    assert {s for s in SubtaskState if sub(s).is_done()} == {
        SubtaskState.SUCCEED,
        SubtaskState.CANCELED,
        SubtaskState.FAILED,
    }


@pytest.mark.parametrize(
    ("cap", "steps", "step", "expected"),
    [
        (0, (), 1, 8),  # no cap
        (3, (), 1, 3),  # cap on every step
        (3, (2,), 1, 8),  # cap on another step
        (3, (1, 2), 2, 3),  # cap on this step
        (16, (), 1, 8),  # cap above the concurrency
    ],
)
def test_runtime_slots(cap: int, steps: tuple[int, ...], step: int, expected: int) -> None:
    task = _task(1, step=step, concurrency=8, extra_params=ExtraParams(max_runtime_slots=cap, target_steps=steps))
    assert task.runtime_slots() == expected


def test_extra_params_json_round_trip() -> None:
    full = ExtraParams(manual_recovery=True, max_runtime_slots=4, target_steps=(1, 3))
    assert ExtraParams.from_json(full.to_json()) == full
    assert json.loads(full.to_json()) == {"manual_recovery": True, "max_runtime_slots": 4, "target_steps": [1, 3]}
    assert ExtraParams().to_json() == "{}"  # omitempty, as DXF
    for malformed in (None, "", "not json", "[1, 2]", '{"max_runtime_slots": "x"}', '{"target_steps": 5}'):
        assert ExtraParams.from_json(malformed) == ExtraParams()


def test_modify_param_json_round_trip() -> None:
    param = ModifyParam(
        TaskState.PAUSED,
        (Modification(ModificationType.CONCURRENCY.value, 8), Modification(ModificationType.MAX_NODE_COUNT.value, 2)),
    )
    assert ModifyParam.from_json(param.to_json()) == param
    assert json.loads(param.to_json()) == {
        "prev_state": "paused",
        "modifications": [{"type": "modify_concurrency", "to": 8}, {"type": "modify_max_node_count", "to": 2}],
    }
    assert {m.value for m in ModificationType} == {
        "modify_concurrency",
        "modify_max_node_count",
        "modify_batch_size",
        "modify_max_write_speed",
    }
    for malformed in (
        None,
        "",
        "{",
        "[]",
        '{"prev_state": "nope", "modifications": []}',
        '{"prev_state": "running"}',
        '{"prev_state": "running", "modifications": [{"type": "x"}]}',
        '{"prev_state": "running", "modifications": [{"type": "x", "to": "many"}]}',
    ):
        assert ModifyParam.from_json(malformed) is None


def test_stored_error_json_round_trip() -> None:
    err = StoredError.from_exception(ValueError("bad row 7"))
    assert (err.type_name, err.message, str(err)) == ("ValueError", "bad row 7", "bad row 7")
    assert StoredError.from_json(err.to_json()) == err
    assert StoredError.from_exception(err) is err
    assert StoredError.from_exception(KeyError()).message == "KeyError"  # empty message: the type
    assert serialize_error(None) is None
    assert StoredError.from_json(serialize_error(RuntimeError("x"))) == StoredError("RuntimeError", "x")
    assert StoredError.from_json(None) is None and StoredError.from_json("") is None
    # Unparsable text becomes a plain error carrying the raw text, as in DXF.
    for raw in ("plain text", "{", '{"type": "E"}', "[1]", "42"):
        assert StoredError.from_json(raw) == StoredError("Error", raw)
    with pytest.raises(StoredError):
        raise err


def test_is_cancelled_error() -> None:
    assert is_cancelled_error(StoredError("Error", "cancelled by user"))
    assert not is_cancelled_error(StoredError("Error", "boom"))
    assert not is_cancelled_error(None)


@pytest.mark.parametrize("good", [1, 512, 1024])
def test_validate_priority_accepts(good: int) -> None:
    assert validate_priority(good) == good


@pytest.mark.parametrize("bad", [0, 1025, -1, "5", 5.0, None, True])
def test_validate_priority_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"priority"):
        validate_priority(bad)  # type: ignore[arg-type]


def test_node_resource_step_resource() -> None:
    node = NodeResource(total_cpu=8, total_mem=16 * 1024, total_disk=100)
    task = _task(1, concurrency=4)
    assert node.step_resource(task) == StepResource(cpu=4, mem=8 * 1024)
    capped = _task(2, concurrency=4, extra_params=ExtraParams(max_runtime_slots=2))
    assert node.step_resource(capped) == StepResource(cpu=2, mem=4 * 1024)
    assert NodeResource(0, 1024).step_resource(task) == StepResource(cpu=4, mem=0)


def test_task_base_copy() -> None:
    task = Task(id=1, key="k", type="t", state=TaskState.PENDING, step=STEP_INIT, meta=b"m")
    base = task.base()
    assert type(base) is TaskBase and base.key == "k" and not hasattr(base, "meta")
