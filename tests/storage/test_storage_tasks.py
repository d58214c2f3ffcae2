"""TaskManager, task side: create, read, rank order, exec info and every state transition.

Every test runs on SQLite, PostgreSQL and MariaDB (the ``task_manager`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from helpers.storage import force_subtask, force_task, new_task, plan, running_task

from dxf_celery.errors import (
    InvalidTaskError,
    TaskChangedError,
    TaskNotFoundError,
    TaskStateNotAllowedError,
)
from dxf_celery.proto import (
    NORMAL_PRIORITY,
    STEP_DONE,
    STEP_INIT,
    ExtraParams,
    Modification,
    ModificationType,
    ModifyParam,
    StoredError,
    SubtaskState,
    TaskState,
)
from dxf_celery.storage import TaskManager, utcnow

# ---------------------------------------------------------------- create and read


def test_create_task_without_nodes_is_pending(task_manager: TaskManager) -> None:
    params = ExtraParams(manual_recovery=True, max_runtime_slots=2, target_steps=(1, 3))
    task_id = task_manager.create_task(
        "k1", "import", 64, target_scope="bg", max_node_count=3, extra_params=params, meta=b"\x00\xffmeta"
    )
    task = task_manager.get_task_by_id(task_id)
    assert (task.key, task.type, task.state, task.step) == ("k1", "import", TaskState.PENDING, STEP_INIT)
    assert (task.concurrency, task.priority, task.target_scope, task.max_node_count) == (64, NORMAL_PRIORITY, "bg", 3)
    assert task.extra_params == params
    assert task.meta == b"\x00\xffmeta"
    assert task.error is None and task.start_time is None and task.end_time is None and task.modify_param is None
    assert abs(task.create_time - utcnow()) < timedelta(minutes=1)


def test_create_task_with_nodes_checks_concurrency(task_manager: TaskManager) -> None:
    task_manager.init_meta("n1", "", cpu_count=8)
    assert task_manager.get_task_by_id(task_manager.create_task("fits", "t", 8)).concurrency == 8
    with pytest.raises(InvalidTaskError, match="larger than the CPU slots"):
        task_manager.create_task("too-big", "t", 9)
    with pytest.raises(TaskNotFoundError):
        task_manager.get_task_by_key("too-big")


def test_get_task_variants(task_manager: TaskManager) -> None:
    task = new_task(task_manager, "k1", meta=b"heavy")
    assert task_manager.get_task_by_key("k1").id == task.id
    base = task_manager.get_task_base_by_id(task.id)
    assert base.key == "k1" and not hasattr(base, "meta")
    for fn, arg in [
        (task_manager.get_task_by_id_with_history, task.id),
        (task_manager.get_task_by_key_with_history, "k1"),
    ]:
        assert fn(arg).id == task.id  # type: ignore[operator]
    missing_calls: list[Callable[[], object]] = [
        lambda: task_manager.get_task_by_id(task.id + 1000),
        lambda: task_manager.get_task_base_by_id(task.id + 1000),
        lambda: task_manager.get_task_by_key("nope"),
        lambda: task_manager.get_task_by_id_with_history(task.id + 1000),
        lambda: task_manager.get_task_by_key_with_history("nope"),
    ]
    for missing in missing_calls:
        with pytest.raises(TaskNotFoundError):
            missing()


def test_get_task_with_history_finds_moved_task(task_manager: TaskManager) -> None:
    task = new_task(task_manager, "old")
    force_task(task_manager, task.id, state=TaskState.SUCCEED)
    assert task_manager.transfer_tasks_to_history([task_manager.get_task_by_id(task.id)]) == 1
    with pytest.raises(TaskNotFoundError):
        task_manager.get_task_by_id(task.id)
    assert task_manager.get_task_by_id_with_history(task.id).state == TaskState.SUCCEED
    assert task_manager.get_task_by_key_with_history("old").id == task.id
    assert task_manager.get_task_by_key_with_history("old").state == TaskState.SUCCEED
    # A new task never reuses the id of a task in history (SQLite needs AUTOINCREMENT for this).
    assert task_manager.create_task("new", "t", 1) > task.id


def test_count_tasks_counts_live_and_history_in_one_read(task_manager: TaskManager) -> None:
    a, b, c, d = (new_task(task_manager, k) for k in "abcd")
    for t in (a, b, c):
        force_task(task_manager, t.id, state=TaskState.SUCCEED)
    assert task_manager.transfer_tasks_to_history([task_manager.get_task_by_id(a.id)]) == 1
    assert task_manager.count_tasks([TaskState.SUCCEED]) == 3
    assert task_manager.count_tasks([TaskState.SUCCEED], with_history=False) == 2
    assert task_manager.count_tasks([TaskState.SUCCEED], min_id=b.id) == 2
    assert task_manager.count_tasks([TaskState.SUCCEED], min_id=a.id, max_id=b.id) == 2
    assert task_manager.count_tasks([TaskState.SUCCEED, TaskState.PENDING], min_id=c.id, max_id=d.id) == 2
    assert task_manager.count_tasks([TaskState.FAILED]) == 0


def test_get_tasks_in_states_and_all_tasks(task_manager: TaskManager) -> None:
    a = new_task(task_manager, "a")
    b = new_task(task_manager, "b", priority=1)
    force_task(task_manager, a.id, state=TaskState.RUNNING)
    assert [t.key for t in task_manager.get_tasks_in_states(TaskState.RUNNING, TaskState.PENDING)] == ["b", "a"]
    assert [t.key for t in task_manager.get_tasks_in_states("running")] == ["a"]
    assert task_manager.get_tasks_in_states() == []
    assert [t.id for t in task_manager.get_tasks_in_states(TaskState.PENDING)] == [b.id]
    assert [t.key for t in task_manager.get_all_tasks()] == ["b", "a"]
    assert [t.key for t in task_manager.list_tasks([TaskState.RUNNING])] == ["a"]


def test_get_top_unfinished_tasks_rank_order(task_manager: TaskManager) -> None:
    ids = {key: new_task(task_manager, key, priority=p).id for key, p in [("p5", 5), ("p1", 1), ("p5b", 5), ("p9", 9)]}
    # Same priority and same create_time: the id decides.
    same = utcnow()
    force_task(task_manager, ids["p5"], create_time=same)
    force_task(task_manager, ids["p5b"], create_time=same)
    older = new_task(task_manager, "p9-older", priority=9)
    force_task(task_manager, older.id, create_time=same - timedelta(seconds=5))
    done = new_task(task_manager, "done", priority=1)
    force_task(task_manager, done.id, state=TaskState.SUCCEED)
    waiting = new_task(task_manager, "waiting", priority=1)
    force_task(task_manager, waiting.id, state=TaskState.AWAITING_RESOLUTION)
    top = task_manager.get_top_unfinished_tasks()
    assert [t.key for t in top] == ["p1", "p5", "p5b", "p9-older", "p9"]
    assert [t.key for t in task_manager.get_top_unfinished_tasks(limit=2)] == ["p1", "p5"]
    force_task(task_manager, ids["p9"], state=TaskState.REVERTING)
    assert [t.key for t in task_manager.get_top_no_need_resource_tasks()] == ["p9"]


def test_get_task_exec_info_by_exec_id(task_manager: TaskManager) -> None:
    a = new_task(task_manager, "a", concurrency=2)
    subtasks = plan(a, 1, ["n1", "n1", "n2"], 3)
    subtasks[0].concurrency = 1
    assert task_manager.switch_task_step(a, TaskState.RUNNING, 1, subtasks)
    reverting = running_task(task_manager, "reverting", exec_ids=["n1"], concurrency=3)
    force_task(task_manager, reverting.id, state=TaskState.REVERTING)
    pausing = running_task(task_manager, "pausing", exec_ids=["n1"])
    force_task(task_manager, pausing.id, state=TaskState.PAUSING)
    for key, state in [("paused", TaskState.PAUSED), ("modifying", TaskState.MODIFYING)]:
        other = running_task(task_manager, key, exec_ids=["n1"])
        force_task(task_manager, other.id, state=state)
    elsewhere = running_task(task_manager, "elsewhere", exec_ids=["n2"])
    finished = running_task(task_manager, "finished", exec_ids=["n1"], n=1)
    (sub,) = task_manager.get_subtasks(finished.id)
    force_subtask(task_manager, sub.id, state=SubtaskState.SUCCEED)
    force_task(task_manager, pausing.id, priority=1)

    infos = task_manager.get_task_exec_info_by_exec_id("n1")
    assert [(i.task.key, i.subtask_concurrency) for i in infos] == [("pausing", 1), ("a", 2), ("reverting", 3)]
    assert [i.task.key for i in task_manager.get_task_exec_info_by_exec_id("n2")] == ["a", "elsewhere"]
    assert elsewhere.state == TaskState.RUNNING
    assert task_manager.get_task_exec_info_by_exec_id("nobody") == []


# ---------------------------------------------------------------- transitions

ERR = RuntimeError("boom")


def _call(name: str, *args: object) -> Callable[[TaskManager, int, str], bool]:
    def run(tm: TaskManager, task_id: int, key: str) -> bool:
        resolved = [task_id if a == "ID" else key if a == "KEY" else a for a in args]
        return bool(getattr(tm, name)(*resolved))

    run.__name__ = name
    return run


# (call, start state, expected end state or None for "unchanged", a state the guard refuses)
TRANSITIONS = [
    (_call("request_cancel", "ID"), TaskState.PENDING, TaskState.CANCELLING, TaskState.PAUSED),
    (_call("request_cancel", "ID"), TaskState.RUNNING, TaskState.CANCELLING, TaskState.REVERTING),
    (_call("request_cancel", "ID"), TaskState.AWAITING_RESOLUTION, TaskState.CANCELLING, TaskState.SUCCEED),
    (_call("fail", "ID", TaskState.PENDING, ERR), TaskState.PENDING, TaskState.FAILED, TaskState.RUNNING),
    (_call("start_reverting", "ID", TaskState.RUNNING, ERR), TaskState.RUNNING, TaskState.REVERTING, TaskState.PENDING),
    (
        _call("await_resolution", "ID", TaskState.RUNNING, ERR),
        TaskState.RUNNING,
        TaskState.AWAITING_RESOLUTION,
        TaskState.PAUSED,
    ),
    (_call("finish_reverting", "ID"), TaskState.REVERTING, TaskState.REVERTED, TaskState.RUNNING),
    (_call("request_pause", "ID"), TaskState.PENDING, TaskState.PAUSING, TaskState.PAUSED),
    (_call("request_pause", "ID"), TaskState.RUNNING, TaskState.PAUSING, TaskState.REVERTING),
    (_call("finish_pausing", "ID"), TaskState.PAUSING, TaskState.PAUSED, TaskState.RUNNING),
    (_call("request_resume", "ID"), TaskState.PAUSED, TaskState.RESUMING, TaskState.PAUSING),
    (_call("finish_resuming", "ID"), TaskState.RESUMING, TaskState.RUNNING, TaskState.PAUSED),
    (_call("succeed", "ID"), TaskState.RUNNING, TaskState.SUCCEED, TaskState.PENDING),
]


@pytest.mark.parametrize(
    ("call", "start", "end", "refused"),
    TRANSITIONS,
    ids=[f"{c.__name__}-{s.value}" for c, s, _, _ in TRANSITIONS],
)
def test_task_transition(
    task_manager: TaskManager,
    call: Callable[[TaskManager, int, str], bool],
    start: TaskState,
    end: TaskState,
    refused: TaskState,
) -> None:
    ok = new_task(task_manager, "ok")
    force_task(task_manager, ok.id, state=start)
    before = task_manager.get_task_by_id(ok.id)
    assert call(task_manager, ok.id, "ok") is True
    after = task_manager.get_task_by_id(ok.id)
    assert after.state == end
    assert after.state_update_time is not None and after.state_update_time >= before.state_update_time  # type: ignore[operator]
    if end in (TaskState.FAILED, TaskState.REVERTING, TaskState.AWAITING_RESOLUTION):
        assert after.error == StoredError("RuntimeError", "boom")
    if end in (TaskState.FAILED, TaskState.REVERTED, TaskState.SUCCEED):
        assert after.end_time is not None
    else:
        assert after.end_time is None
    if end == TaskState.SUCCEED:
        assert after.step == STEP_DONE
    # A task in a state the guard refuses is left as it is.
    guarded = new_task(task_manager, "guarded")
    force_task(task_manager, guarded.id, state=refused)
    assert call(task_manager, guarded.id, "guarded") is False
    unchanged = task_manager.get_task_by_id(guarded.id)
    assert unchanged.state == refused and unchanged.error is None and unchanged.step == STEP_INIT
    assert call(task_manager, 10**9, "missing") is False


def test_resolve_awaiting_task(task_manager: TaskManager) -> None:
    task = running_task(task_manager, n=4)
    subs = task_manager.get_subtasks(task.id)
    force_subtask(task_manager, subs[0].id, state=SubtaskState.FAILED, error='{"type":"E","message":"x"}')
    force_subtask(task_manager, subs[1].id, state=SubtaskState.CANCELED)
    force_subtask(task_manager, subs[2].id, state=SubtaskState.SUCCEED)
    assert task_manager.resolve(task.id) is False  # running: guard refuses
    assert [s.state for s in task_manager.get_subtasks(task.id)][:2] == [SubtaskState.FAILED, SubtaskState.CANCELED]
    assert task_manager.await_resolution(task.id, TaskState.RUNNING, ERR)
    assert task_manager.resolve(task.id) is True
    after = task_manager.get_task_by_id(task.id)
    assert after.state == TaskState.RUNNING and after.error is None
    states = [(s.state, s.error) for s in task_manager.get_subtasks(task.id)]
    assert states == [
        (SubtaskState.PENDING, None),
        (SubtaskState.PENDING, None),
        (SubtaskState.SUCCEED, None),
        (SubtaskState.PENDING, None),
    ]
    assert task_manager.resolve(task.id) is False


def _modify_param(prev: TaskState, to: int = 4) -> ModifyParam:
    return ModifyParam(prev, (Modification(ModificationType.CONCURRENCY.value, to),))


@pytest.mark.parametrize("prev", [TaskState.PENDING, TaskState.RUNNING, TaskState.PAUSED])
def test_modify_and_modified_task(task_manager: TaskManager, prev: TaskState) -> None:
    task = running_task(task_manager, n=3, concurrency=2)
    subs = task_manager.get_subtasks(task.id)
    force_subtask(task_manager, subs[0].id, state=SubtaskState.SUCCEED)
    force_subtask(task_manager, subs[1].id, state=SubtaskState.PAUSED)
    force_task(task_manager, task.id, state=prev)
    task_manager.modify_task_by_id(task.id, _modify_param(prev))
    modifying = task_manager.get_task_by_id(task.id)
    assert modifying.state == TaskState.MODIFYING
    assert modifying.modify_param == _modify_param(prev)
    # The scheduler applies it: new concurrency, limits and meta, back to the previous state.
    modifying.concurrency, modifying.max_node_count, modifying.meta = 4, 2, b"new-meta"
    assert task_manager.finish_modifying(modifying) is True
    done = task_manager.get_task_by_id(task.id)
    assert (done.state, done.concurrency, done.max_node_count, done.meta) == (prev, 4, 2, b"new-meta")
    assert done.modify_param is None
    assert [s.concurrency for s in task_manager.get_subtasks(task.id)] == [2, 4, 4]
    # Applied already: a second scheduler's attempt is a no-op.
    assert task_manager.finish_modifying(modifying) is False


def test_modify_task_errors(task_manager: TaskManager) -> None:
    task = new_task(task_manager)
    with pytest.raises(TaskStateNotAllowedError):
        task_manager.modify_task_by_id(task.id, _modify_param(TaskState.REVERTING))
    with pytest.raises(TaskNotFoundError):
        task_manager.modify_task_by_id(10**9, _modify_param(TaskState.PENDING))
    with pytest.raises(TaskChangedError):
        task_manager.modify_task_by_id(task.id, _modify_param(TaskState.RUNNING))
    assert task_manager.get_task_by_id(task.id).state == TaskState.PENDING
    with pytest.raises(TaskStateNotAllowedError):
        task_manager.finish_modifying(task)  # no modification pending
    not_modifying = task_manager.get_task_by_id(task.id)
    not_modifying.modify_param = _modify_param(TaskState.PENDING)
    assert task_manager.finish_modifying(not_modifying) is False


def test_in_memory_sqlite_is_one_shared_database() -> None:
    """``sqlite://`` must give every thread (and reads and writes) the same database."""
    import threading

    tm = TaskManager("sqlite://")
    try:
        tm.create_tables()
        errors: list[BaseException] = []

        def submit(i: int) -> None:
            try:
                for j in range(20):
                    task_id = tm.create_task(f"k{i}-{j}", "t", 1)
                    assert tm.get_task_by_id(task_id).key == f"k{i}-{j}"
            except BaseException as err:  # collected and asserted below
                errors.append(err)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert len(tm.get_all_tasks()) == 80
    finally:
        tm.dispose()
