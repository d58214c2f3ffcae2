"""Small builders shared by the storage tests (and the spawn-safe worker of the process race)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dxf_celery.errors import SubtaskNotFoundError
from dxf_celery.proto import Subtask, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager


def plan(task: Task, step: int, exec_ids: Sequence[str], n: int, *, meta_size: int = 0) -> list[Subtask]:
    """``n`` subtasks for ``step``, dealt round-robin over ``exec_ids`` as the scheduler does."""
    return [
        Subtask(
            id=0,
            task_id=task.id,
            step=step,
            type=task.type,
            state=SubtaskState.PENDING,
            exec_id=exec_ids[i % len(exec_ids)],
            ordinal=i + 1,
            concurrency=task.concurrency,
            meta=f"m{i}".encode() + b"x" * meta_size,
        )
        for i in range(n)
    ]


def new_task(tm: TaskManager, key: str = "k1", *, concurrency: int = 1, **kwargs: object) -> Task:
    task_id = tm.create_task(key, "t", concurrency, **kwargs)  # type: ignore[arg-type]
    return tm.get_task_by_id(task_id)


def running_task(
    tm: TaskManager, key: str = "k1", *, exec_ids: Sequence[str] = ("n1",), n: int = 2, concurrency: int = 1
) -> Task:
    """A task moved from pending to running at step 1 with ``n`` pending subtasks."""
    task = new_task(tm, key, concurrency=concurrency)
    assert tm.switch_task_step(task, TaskState.RUNNING, 1, plan(task, 1, exec_ids, n))
    return tm.get_task_by_id(task.id)


def claim_worker(url: str, exec_id: str, ids: list[int], start: Any, results: Any) -> None:
    """Process-race worker (spawned): claim the pool in lockstep with the other process.

    ``start`` is a multiprocessing Barrier shared by the two workers: both pass it before
    every claim, so each subtask is really contended. Puts the ids this process won on the
    ``results`` Queue.
    """
    tm = TaskManager(url)
    won: list[int] = []
    try:
        tm.get_busy_nodes()  # open a connection before the start line
        for subtask_id in ids:
            start.wait(60)
            try:
                tm.start_subtask(subtask_id, exec_id)
            except SubtaskNotFoundError:
                continue
            won.append(subtask_id)
        results.put(won)
    finally:
        tm.dispose()


def force_task(tm: TaskManager, task_id: int, **values: Any) -> None:
    """Set task columns directly: a test's shortcut to a state without walking the machine."""
    from sqlalchemy import update

    from dxf_celery.storage.tables import task_table

    values = {k: (v.value if isinstance(v, TaskState) else v) for k, v in values.items()}
    with tm.write_engine.begin() as conn:
        conn.execute(update(task_table).where(task_table.c.id == task_id).values(**values))


def force_subtask(tm: TaskManager, subtask_id: int, **values: Any) -> None:
    from sqlalchemy import update

    from dxf_celery.storage.tables import subtask_table

    values = {k: (v.value if isinstance(v, SubtaskState) else v) for k, v in values.items()}
    with tm.write_engine.begin() as conn:
        conn.execute(update(subtask_table).where(subtask_table.c.id == subtask_id).values(**values))


def empty_database_url(kind: str, tmp_path: Path, suffix: str = "empty") -> str:
    """A brand-new database with no table at all (not migrated), on the server of ``kind``."""
    from sqlalchemy import create_engine, text

    from helpers.db import MYSQL_ADMIN_URL, PG_ADMIN_URL, TEST_DB_NAME

    name = f"{TEST_DB_NAME}_{suffix}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    if kind == "postgresql":
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    admin = create_engine(MYSQL_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    admin.dispose()
    return MYSQL_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def alembic_revisions() -> list[tuple[str, str | None]]:
    """The shipped Alembic revisions as (revision, down_revision), oldest first."""
    from alembic.script import ScriptDirectory

    from dxf_celery.storage.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))  # type: ignore[arg-type]
    revs = [(r.revision, r.down_revision) for r in script.walk_revisions()]
    assert all(isinstance(down, (str, type(None))) for _, down in revs), "no merge revisions expected"
    return [(rev, down) for rev, down in reversed(revs)]  # type: ignore[misc]


def alembic_head() -> str:
    """The newest shipped Alembic revision (what ``migrate`` stamps)."""
    return alembic_revisions()[-1][0]
