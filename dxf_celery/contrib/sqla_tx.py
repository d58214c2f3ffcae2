"""Submit inside a SQLAlchemy transaction (Flask, FastAPI, scripts): the task exists iff the rows do.

    with engine.begin() as conn:                       # or: with Session.begin() as session:
        conn.execute(insert(orders).values(key="o-1"))  #         conn = session.connection()
        submit_task_in(conn, dxf, "o-1", "report", meta=...)

The task row is inserted on ``conn``, inside a savepoint (a refused submit such as a duplicate
key raises and leaves the transaction usable); a rollback removes it with the caller's rows.
The scheduler wake-up is sent when ``conn`` commits. The DXF tables must be in the database of
``conn``; use :meth:`DXF.submit_task` otherwise.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event

from dxf_celery import handle
from dxf_celery.app import DXF
from dxf_celery.proto import Task
from dxf_celery.storage.external_tx import task_manager_in


def submit_task_in(connection: Connection, dxf: DXF, key: str, task_type: str, **kwargs: Any) -> Task:
    """Create a pending task in ``connection``'s open transaction; ``kwargs`` as :meth:`DXF.submit_task`."""
    with connection.begin_nested(), task_manager_in(connection) as tm:
        task = handle.submit_task(tm, key, task_type, **kwargs)
    event.listen(connection, "commit", lambda _conn: dxf.wake(), once=True)
    return task
