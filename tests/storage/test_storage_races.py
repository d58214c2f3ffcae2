"""Real races on SQLite, PostgreSQL and MariaDB: threads released together by a Barrier, each
with its own TaskManager (own connections), and one race between two spawned processes.

Every round asserts the outcome the storage layer promises: one winner, rows inserted once.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from helpers.storage import claim_worker, new_task, plan, running_task

from dxf_celery.errors import SubtaskNotFoundError, TaskAlreadyExistsError
from dxf_celery.proto import STEP_INIT, Modification, ModifyParam, SubtaskState, TaskState
from dxf_celery.storage import TaskManager, step_switch

ROUNDS = 25


def race(db_url: str, rounds: int, op: Callable[[TaskManager, int, int], Any]) -> list[list[Any]]:
    """Run ``op(tm, racer, round)`` in two threads, released together each round.

    Returns, per round, the two results (an exception object stands for a raise).
    """
    managers = [TaskManager(db_url), TaskManager(db_url)]
    barrier = threading.Barrier(2, timeout=60)
    results: list[list[Any]] = [[None, None] for _ in range(rounds)]

    def runner(racer: int) -> None:
        for r in range(rounds):
            barrier.wait()
            try:
                results[r][racer] = op(managers[racer], racer, r)
            except Exception as err:  # recorded, asserted by the test
                results[r][racer] = err

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a racer hung"
    finally:
        for tm in managers:
            tm.dispose()
    return results


def test_start_subtask_race_has_one_winner(task_manager: TaskManager, db_url: str) -> None:
    task = running_task(task_manager, n=ROUNDS)
    ids = [s.id for s in task_manager.get_subtasks(task.id)]

    def op(tm: TaskManager, racer: int, r: int) -> bool:
        tm.start_subtask(ids[r], "n1")
        return True

    results = race(db_url, ROUNDS, op)
    for r, pair in enumerate(results):
        wins = [x for x in pair if x is True]
        losses = [x for x in pair if isinstance(x, SubtaskNotFoundError)]
        assert (len(wins), len(losses)) == (1, 1), f"round {r}: {pair}"


def test_switch_task_step_race_inserts_once(task_manager: TaskManager, db_url: str) -> None:
    rounds = 12
    tasks = [new_task(task_manager, f"k{r}") for r in range(rounds)]

    def op(tm: TaskManager, racer: int, r: int) -> bool:
        task = tasks[r]
        return tm.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1", "n2"], 5))

    results = race(db_url, rounds, op)
    for r, pair in enumerate(results):
        assert sorted(pair) == [False, True], f"round {r}: {pair}"
        subs = task_manager.get_subtasks(tasks[r].id)
        assert [s.ordinal for s in subs] == [1, 2, 3, 4, 5]
        assert task_manager.get_task_by_id(tasks[r].id).state == TaskState.RUNNING


def test_switch_task_step_in_batch_race_inserts_once(
    task_manager: TaskManager, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(step_switch, "MAX_SUBTASK_BATCH_BYTES", 16)  # a few subtasks per batch
    rounds = 8
    tasks = [new_task(task_manager, f"k{r}") for r in range(rounds)]

    def op(tm: TaskManager, racer: int, r: int) -> bool:
        task = tasks[r]
        return tm.switch_task_step_in_batch(task, TaskState.RUNNING, 1, plan(task, 1, ["n1", "n2"], 12, meta_size=4))

    results = race(db_url, rounds, op)
    for r, pair in enumerate(results):
        assert sorted(pair) == [False, True], f"round {r}: {pair}"
        subs = task_manager.get_subtasks(tasks[r].id)
        assert [s.ordinal for s in subs] == list(range(1, 13))


def test_lease_race_has_one_owner(task_manager: TaskManager, db_url: str) -> None:
    def op(tm: TaskManager, racer: int, r: int) -> bool:
        # Even rounds: nobody holds the lease yet. Odd rounds: it has just expired.
        return tm.try_acquire_lease(f"lease-{r // 2}", f"owner-{racer}", 30 if r % 2 == 0 else -1)

    # Odd rounds race for an expired lease: make each even round's lease expire at once.
    def expiring(tm: TaskManager, racer: int, r: int) -> bool:
        if r % 2 == 0:
            return tm.try_acquire_lease(f"lease-{r}", f"owner-{racer}", -1)
        return tm.try_acquire_lease(f"lease-{r - 1}", f"owner-{racer}", 30)

    for pair in race(db_url, ROUNDS, op)[::2]:
        assert sorted(pair) == [False, True], pair
    for r, pair in enumerate(race(db_url, 2 * (ROUNDS // 2), expiring)):
        if r % 2 == 1:
            assert sorted(pair) == [False, True], f"round {r}: {pair}"
            assert task_manager.get_lease_owner(f"lease-{r - 1}") == f"owner-{pair.index(True)}"


def test_guarded_transition_race_has_one_winner(task_manager: TaskManager, db_url: str) -> None:
    rounds = 12
    tasks = [new_task(task_manager, f"k{r}") for r in range(rounds)]

    def op(tm: TaskManager, racer: int, r: int) -> bool:
        # Racer 0 cancels, racer 1 plans: the task ends in exactly one of the two outcomes.
        if racer == 0:
            return tm.request_cancel(tasks[r].id)
        return tm.switch_task_step(tasks[r], TaskState.RUNNING, 1, plan(tasks[r], 1, ["n1"], 2))

    for r, (cancelled, switched) in enumerate(race(db_url, rounds, op)):
        task = task_manager.get_task_by_id(tasks[r].id)
        if switched:
            # Planned first; cancel may still follow from running.
            assert task.state in (TaskState.RUNNING, TaskState.CANCELLING) and task.step == 1
            assert len(task_manager.get_subtasks(task.id)) == 2
        else:
            assert cancelled is True and task.state == TaskState.CANCELLING and task.step == STEP_INIT
            assert task_manager.get_subtasks(task.id) == []


def test_two_processes_claim_each_subtask_once(task_manager: TaskManager, db_url: str) -> None:
    n = 120
    task = new_task(task_manager)
    assert task_manager.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, ["n1"], n))
    ids = [s.id for s in task_manager.get_subtasks(task.id)]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=claim_worker, args=(db_url, "n1", ids, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    won = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    counts = Counter(won[0] + won[1])
    assert set(counts) == set(ids), "some subtask was never claimed"
    assert max(counts.values()) == 1, "a subtask was claimed twice"
    assert all(s.state == SubtaskState.RUNNING for s in task_manager.get_subtasks(task.id))


def test_transfer_to_history_race_moves_once(task_manager: TaskManager, db_url: str) -> None:
    rounds = 10
    tasks = []
    for r in range(rounds):
        task = running_task(task_manager, f"k{r}", n=2)
        for s in task_manager.get_subtasks(task.id):
            task_manager.start_subtask(s.id, "n1")
            task_manager.finish_subtask("n1", s.id, b"done")
        assert task_manager.succeed(task.id)
        tasks.append(task_manager.get_task_by_id(task.id))

    def op(tm: TaskManager, racer: int, r: int) -> int:
        return tm.transfer_tasks_to_history([tasks[r]])

    for r, pair in enumerate(race(db_url, rounds, op)):
        assert sorted(pair) == [0, 1], f"round {r}: {pair}"
        assert len(task_manager.get_subtasks(tasks[r].id)) == 2
    assert task_manager.get_all_tasks() == []


def test_node_registration_race(task_manager: TaskManager, db_url: str) -> None:
    def op(tm: TaskManager, racer: int, r: int) -> None:
        if racer == 0:
            tm.init_meta(f"node-{r}", "background", cpu_count=4)
        else:
            tm.recover_meta(f"node-{r}", "", cpu_count=4)

    for r, pair in enumerate(race(db_url, ROUNDS, op)):
        assert pair == [None, None], f"round {r}: {pair}"
    assert len(task_manager.get_all_nodes()) == ROUNDS


def test_create_task_same_key_race(task_manager: TaskManager, db_url: str) -> None:
    def op(tm: TaskManager, racer: int, r: int) -> int:
        return tm.create_task(f"key-{r}", "t", 1)

    for r, pair in enumerate(race(db_url, ROUNDS, op)):
        ids = [x for x in pair if isinstance(x, int)]
        refused = [x for x in pair if isinstance(x, TaskAlreadyExistsError)]
        assert (len(ids), len(refused)) == (1, 1), f"round {r}: {pair}"
        assert task_manager.get_task_by_key(f"key-{r}").id == ids[0]


def test_reads_over_live_and_history_never_see_a_row_twice(task_manager: TaskManager, db_url: str) -> None:
    """Readers racing transfer_tasks_to_history see each subtask once: one snapshot per read.

    Two statements (live, then history) would show the moved rows twice when the transfer
    commits between them; each task here is read in a tight loop while it moves.
    """
    tm = task_manager
    tasks = []
    for i in range(30):
        task = running_task(tm, f"h{i}", n=4)
        for s in tm.get_subtasks(task.id):
            tm.start_subtask(s.id, s.exec_id)
            tm.finish_subtask(s.exec_id, s.id, b"done")
        assert tm.succeed(task.id)
        tasks.append(tm.get_task_by_id(task.id))
    readers = [TaskManager(db_url) for _ in range(2)]
    seen: list[tuple[int, int]] = []  # (subtasks seen, step-1 count in the progress counts)

    def read(reader: TaskManager, task_id: int, stop: threading.Event) -> None:
        while not stop.is_set():
            subtasks = reader.get_subtasks(task_id)
            seen.append((len(subtasks), sum(reader.get_subtask_counts_by_step(task_id).get(1, {}).values())))

    try:
        for task in tasks:
            stop = threading.Event()
            threads = [threading.Thread(target=read, args=(r, task.id, stop)) for r in readers]
            for t in threads:
                t.start()
            assert tm.transfer_tasks_to_history([task]) == 1
            stop.set()
            for t in threads:
                t.join(30)
    finally:
        for r in readers:
            r.dispose()
    assert seen and all(x == (4, 4) for x in seen), [x for x in seen if x != (4, 4)][:5]
    assert len(tm.list_tasks(limit=100)) == len(tasks)


def test_opposite_user_requests_race_has_one_winner(task_manager: TaskManager, db_url: str) -> None:
    """Pause and cancel from the same state: the table lets exactly one of them through."""
    rounds = 12
    tasks = [running_task(task_manager, f"k{r}", n=1) for r in range(rounds)]

    def op(tm: TaskManager, racer: int, r: int) -> bool:
        return tm.request_pause(tasks[r].id) if racer == 0 else tm.request_cancel(tasks[r].id)

    for r, (paused, cancelled) in enumerate(race(db_url, rounds, op)):
        assert [paused, cancelled].count(True) == 1, f"round {r}: {paused, cancelled}"
        state = task_manager.get_task_by_id(tasks[r].id).state
        assert state == (TaskState.PAUSING if paused else TaskState.CANCELLING), f"round {r}: {state}"


def test_finish_modifying_race_applies_once(task_manager: TaskManager, db_url: str) -> None:
    """Two schedulers (a lease hand-over) apply one modification: one wins, one is a no-op."""
    rounds = 8
    tasks = []
    for r in range(rounds):
        task = running_task(task_manager, f"k{r}", n=1)
        mods = (Modification("modify_concurrency", 2),)
        task_manager.modify_task_by_id(task.id, ModifyParam(TaskState.RUNNING, mods))
        modifying = task_manager.get_task_by_id(task.id)
        modifying.concurrency = 2
        tasks.append(modifying)

    def op(tm: TaskManager, racer: int, r: int) -> bool:
        return tm.finish_modifying(tasks[r])

    for r, pair in enumerate(race(db_url, rounds, op)):
        assert sorted(pair) == [False, True], f"round {r}: {pair}"
        after = task_manager.get_task_by_id(tasks[r].id)
        assert (after.state, after.concurrency, after.modify_param) == (TaskState.RUNNING, 2, None)
