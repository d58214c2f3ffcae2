"""The transition table drives storage: every (verb, current state) pair, on every database.

For each verb of :data:`dxf_celery.transitions.TRANSITIONS` and each ``TaskState`` as the
task's current state, the verb's ``TaskManager`` method must succeed and land in the
table's to-state exactly when the table lists that state, and otherwise refuse (False, or
the documented error) leaving the row untouched. The expectation comes from the table, the
outcome from SQL, so a guard written apart from the table would show up here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers.storage import force_task, new_task, plan

from dxf_celery.errors import TaskStateNotAllowedError
from dxf_celery.proto import (
    STEP_DONE,
    STEP_INIT,
    TASK_DONE_STATES,
    Modification,
    ModificationType,
    ModifyParam,
    StoredError,
    Task,
    TaskState,
)
from dxf_celery.storage import TaskManager
from dxf_celery.transitions import TRANSITIONS, Verb

ERR = RuntimeError("walk")
MODS = (Modification(ModificationType.CONCURRENCY.value, 3),)
#: Where a task in ``modifying`` goes back to in the walk (one of ``returns_to``).
PREV = TaskState.PAUSED

Call = Callable[[TaskManager, Task], Any]

CALLS: dict[Verb, Call] = {
    Verb.REQUEST_CANCEL: lambda tm, t: tm.request_cancel(t.id),
    Verb.REQUEST_PAUSE: lambda tm, t: tm.request_pause(t.id),
    Verb.FINISH_PAUSING: lambda tm, t: tm.finish_pausing(t.id),
    Verb.REQUEST_RESUME: lambda tm, t: tm.request_resume(t.id),
    Verb.FINISH_RESUMING: lambda tm, t: tm.finish_resuming(t.id),
    Verb.REQUEST_MODIFY: lambda tm, t: tm.modify_task_by_id(t.id, ModifyParam(t.state, MODS)) is None,
    Verb.FINISH_MODIFYING: lambda tm, t: tm.finish_modifying(t),
    Verb.SWITCH_STEP: lambda tm, t: tm.switch_task_step(t, TaskState.RUNNING, 1, plan(t, 1, ["n1"], 2)),
    Verb.SUCCEED: lambda tm, t: tm.succeed(t.id),
    Verb.START_REVERTING: lambda tm, t: tm.start_reverting(t.id, t.state, ERR),
    Verb.FINISH_REVERTING: lambda tm, t: tm.finish_reverting(t.id),
    Verb.AWAIT_RESOLUTION: lambda tm, t: tm.await_resolution(t.id, t.state, ERR),
    Verb.RESOLVE: lambda tm, t: tm.resolve(t.id),
    Verb.FAIL: lambda tm, t: tm.fail(t.id, t.state, ERR),
}
#: What refusing looks like where it is not ``False`` (DESIGN §1: modify raises).
REFUSALS: dict[Verb, type[Exception]] = {Verb.REQUEST_MODIFY: TaskStateNotAllowedError}
#: Verbs whose effect includes the error passed in.
STORES_ERROR = {Verb.START_REVERTING, Verb.AWAIT_RESOLUTION, Verb.FAIL}


def test_every_verb_is_walked_and_has_its_method() -> None:
    assert set(CALLS) == set(Verb) == set(TRANSITIONS)
    named_elsewhere = {Verb.REQUEST_MODIFY: "modify_task_by_id", Verb.SWITCH_STEP: "switch_task_step"}
    for verb in Verb:
        assert callable(getattr(TaskManager, named_elsewhere.get(verb, verb.value))), verb


def _task_in(tm: TaskManager, key: str, state: TaskState) -> Task:
    task = new_task(tm, key)
    # A pending modification on every row, so finish_modifying is refused by the state alone.
    force_task(tm, task.id, state=state, modify_params=ModifyParam(PREV, MODS).to_json())
    return tm.get_task_by_id(task.id)


def _snapshot(tm: TaskManager, task_id: int) -> tuple[Any, ...]:
    t = tm.get_task_by_id(task_id)
    subtasks = [(s.ordinal, s.state) for s in tm.get_subtasks(task_id)]
    return (t.state, t.step, t.error, t.end_time, t.concurrency, t.modify_param, t.meta, subtasks)


@pytest.mark.parametrize("verb", list(Verb), ids=[v.value for v in Verb])
def test_walk_every_state(task_manager: TaskManager, verb: Verb) -> None:
    tm, transition, call = task_manager, TRANSITIONS[verb], CALLS[verb]
    for state in TaskState:
        task = _task_in(tm, f"{verb.value}-{state.value}", state)
        if verb == Verb.FINISH_MODIFYING:
            task.concurrency = 3
        before = _snapshot(tm, task.id)
        try:
            moved = call(tm, task)
        except Exception as err:
            refusal = REFUSALS.get(verb)
            if refusal is None or not isinstance(err, refusal):
                raise
            moved = False
        after = tm.get_task_by_id(task.id)
        if not transition.allows(state):
            assert moved is False, f"{verb} from {state} must be refused"
            assert _snapshot(tm, task.id) == before, f"{verb} from {state} changed the row"
            continue
        expected = transition.to_state if transition.to_state is not None else PREV
        assert moved is True, f"{verb} from {state} must succeed"
        assert after.state == expected, f"{verb} from {state} landed in {after.state}"
        assert (after.end_time is not None) == (expected in TASK_DONE_STATES)
        if verb in STORES_ERROR:
            assert after.error == StoredError("RuntimeError", "walk")
        if verb == Verb.SUCCEED:
            assert after.step == STEP_DONE
        if verb == Verb.SWITCH_STEP:
            assert after.step == 1 and len(tm.get_subtasks(task.id)) == 2
        else:
            assert after.step in (STEP_INIT, STEP_DONE)
        if verb == Verb.REQUEST_MODIFY:
            assert after.modify_param == ModifyParam(state, MODS)
        if verb == Verb.FINISH_MODIFYING:
            assert (after.concurrency, after.modify_param) == (3, None)
        if verb == Verb.RESOLVE:
            assert after.error is None


@pytest.mark.parametrize("verb", [Verb.START_REVERTING, Verb.AWAIT_RESOLUTION, Verb.FAIL], ids=str)
def test_stale_expected_state_is_refused(task_manager: TaskManager, verb: Verb) -> None:
    """These verbs compare on the state the caller read: a task that moved on is left alone."""
    method = getattr(task_manager, verb.value)
    for state in TRANSITIONS[verb].from_states:
        for actual in TRANSITIONS[verb].from_states - {state}:
            task = _task_in(task_manager, f"{verb.value}-{state.value}-{actual.value}", actual)
            before = _snapshot(task_manager, task.id)
            assert method(task.id, state, ERR) is False
            assert _snapshot(task_manager, task.id) == before


@pytest.mark.parametrize("prev", sorted(TRANSITIONS[Verb.FINISH_MODIFYING].returns_to), ids=str)
def test_finish_modifying_returns_to_the_previous_state(task_manager: TaskManager, prev: TaskState) -> None:
    task = new_task(task_manager)
    force_task(task_manager, task.id, state=prev)
    task_manager.modify_task_by_id(task.id, ModifyParam(prev, MODS))
    assert task_manager.finish_modifying(task_manager.get_task_by_id(task.id)) is True
    assert task_manager.get_task_by_id(task.id).state == prev


def test_switch_step_is_also_guarded_by_the_step(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    assert task_manager.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], 1))
    stale = task_manager.get_task_by_id(task.id)
    stale.step = STEP_INIT  # what a second scheduler read before the first one planned
    assert task_manager.switch_task_step(stale, TaskState.RUNNING, 1, plan(stale, 1, ["n1"], 1)) is False
    # A target the table does not list for switch_step is refused as well.
    fresh = task_manager.get_task_by_id(task.id)
    assert task_manager.switch_task_step(fresh, TaskState.SUCCEED, 2, []) is False
    assert task_manager.get_task_by_id(task.id).step == 1
