"""server_now: the database server stamps every time that orders or judges.

Runs on SQLite, PostgreSQL and MariaDB: each dialect spells naive-UTC ``now()`` with
microseconds differently, and a column written with it must read back as a ``datetime``
between two readings of the same clock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select

from dxf_celery.storage import TaskManager
from dxf_celery.storage.clock import read_server_now, server_now
from dxf_celery.storage.tables import lease_table


def test_server_now_stamps_a_column_between_two_readings(task_manager: TaskManager) -> None:
    with task_manager.write_engine.begin() as conn:
        before = read_server_now(conn)
    with task_manager.write_engine.begin() as conn:
        conn.execute(insert(lease_table).values(name="clock", owner="me", expires_at=server_now()))
    with task_manager.write_engine.begin() as conn:
        after = read_server_now(conn)
        stamped = conn.execute(select(lease_table.c.expires_at).where(lease_table.c.name == "clock")).scalar_one()
    assert isinstance(stamped, datetime) and stamped.tzinfo is None
    assert before <= stamped <= after


def test_server_now_has_sub_second_resolution(task_manager: TaskManager) -> None:
    """Stamps carry microseconds: whole seconds would tie every rank in a burst of submits."""
    with task_manager.write_engine.begin() as conn:
        readings = [read_server_now(conn) for _ in range(20)]
    assert any(r.microsecond for r in readings)
    assert readings == sorted(readings)
