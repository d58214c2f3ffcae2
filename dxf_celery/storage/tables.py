"""The SQL tables of dxf-celery, as typed SQLAlchemy 2.0 declarative models.

The schema mirrors DXF's tables (``tidb_global_task``, ``tidb_background_subtask``, their
history twins and ``dist_framework_meta``) with a heartbeat on the node table and a lease
table for the single scheduler. The metadata is private to dxf-celery so applications can
list it next to their own in Alembic's ``target_metadata``.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Auto-increment ids: BIGINT everywhere but SQLite, whose rowid alias must be INTEGER.
Id = BigInteger().with_variant(Integer(), "sqlite")
#: Microsecond timestamps (MySQL's DATETIME has whole seconds unless told otherwise), naive UTC.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
#: Opaque payloads of any size (MySQL's BLOB stops at 64 KiB).
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: JSON or error text that may outgrow MySQL's 64 KiB TEXT.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class _TaskColumns:
    """Columns shared by the live task table and its history."""

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task_key: Mapped[str] = mapped_column(String(256), nullable=False)
    type: Mapped[str] = mapped_column(String(256), nullable=False)
    state: Mapped[str] = mapped_column(String(64), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    priority: Mapped[int] = mapped_column(Integer, nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    target_scope: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    max_node_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    extra_params: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[bytes | None] = mapped_column(Blob, nullable=True)
    error: Mapped[str | None] = mapped_column(LongText, nullable=True)
    modify_params: Mapped[str | None] = mapped_column(Text, nullable=True)
    create_time: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    start_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    state_update_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class TaskRow(_TaskColumns, Base):
    __tablename__ = "dxf_task"
    __table_args__ = (
        UniqueConstraint("task_key", name="uq_dxf_task_task_key"),
        Index("ix_dxf_task_state", "state"),
        # Without AUTOINCREMENT SQLite reuses the ids of deleted rows, and a task moved to
        # history would share its id with a new live task.
        {"sqlite_autoincrement": True},
    )


class TaskHistoryRow(_TaskColumns, Base):
    __tablename__ = "dxf_task_history"
    __table_args__ = (
        UniqueConstraint("task_key", name="uq_dxf_task_history_task_key"),
        Index("ix_dxf_task_history_state", "state"),
    )


class _SubtaskColumns:
    """Columns shared by the live subtask table and its history."""

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(256), nullable=False)
    exec_id: Mapped[str] = mapped_column(String(261), nullable=False)
    state: Mapped[str] = mapped_column(String(64), nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    ordinal: Mapped[int] = mapped_column(Integer, nullable=False)
    meta: Mapped[bytes] = mapped_column(Blob, nullable=False)
    summary: Mapped[str] = mapped_column(LongText, nullable=False)
    checkpoint: Mapped[str] = mapped_column(LongText, nullable=False)
    error: Mapped[str | None] = mapped_column(LongText, nullable=True)
    create_time: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    start_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    state_update_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


#: The rows an executor claims from: pending and running. The claim index covers only them on
#: PostgreSQL and SQLite (partial), so claims cost the same at 100 or 100k finished subtasks;
#: MariaDB has no partial index and gets the same columns as a composite one. Queries spell
#: this predicate the same way (SQLite proves a partial index usable only from an equal term).
ACTIVE_PREDICATE = "state IN ('pending', 'running')"


class SubtaskRow(_SubtaskColumns, Base):
    __tablename__ = "dxf_subtask"
    __table_args__ = (
        UniqueConstraint("task_id", "step", "ordinal", name="uq_dxf_subtask_task_step_ordinal"),
        Index("ix_dxf_subtask_exec_state", "exec_id", "state"),
        Index("ix_dxf_subtask_task_step_state", "task_id", "step", "state"),
        Index(
            "ix_dxf_subtask_claim",
            "task_id",
            "exec_id",
            "step",
            "state",
            "id",
            postgresql_where=text(ACTIVE_PREDICATE),
            sqlite_where=text(ACTIVE_PREDICATE),
        ),
        # The scheduler's load aggregate (slots in use, the balancer's per-node counts): it
        # groups live rows by (state, task_id, exec_id) in index order, reading concurrency
        # and id from the index alone, so a pass never touches finished rows or the heap.
        Index(
            "ix_dxf_subtask_load",
            "state",
            "task_id",
            "exec_id",
            "concurrency",
            "id",
            postgresql_where=text(ACTIVE_PREDICATE),
            sqlite_where=text(ACTIVE_PREDICATE),
        ),
        # Ids must never be reused: subtask history keeps them as its primary key.
        {"sqlite_autoincrement": True},
    )


class SubtaskHistoryRow(_SubtaskColumns, Base):
    __tablename__ = "dxf_subtask_history"
    __table_args__ = (
        Index("ix_dxf_subtask_history_task_id", "task_id"),
        Index("ix_dxf_subtask_history_state_update_time", "state_update_time"),
    )


class NodeRow(Base):
    """A worker node (DXF's ``dist_framework_meta``) plus its last heartbeat."""

    __tablename__ = "dxf_node"

    host: Mapped[str] = mapped_column(String(261), primary_key=True)
    role: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    cpu_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    heartbeat: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: The task types the node's process registered, a JSON list; NULL = unknown (an older node).
    task_types: Mapped[str | None] = mapped_column(LongText, nullable=True)


class LeaseRow(Base):
    """An expiring lease, e.g. who runs the scheduler pass right now."""

    __tablename__ = "dxf_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(261), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)


metadata = Base.metadata
# Core handles on the tables (declarative types them as FromClause; they are Tables).
task_table = cast(Table, TaskRow.__table__)
task_history_table = cast(Table, TaskHistoryRow.__table__)
subtask_table = cast(Table, SubtaskRow.__table__)
subtask_history_table = cast(Table, SubtaskHistoryRow.__table__)
node_table = cast(Table, NodeRow.__table__)
lease_table = cast(Table, LeaseRow.__table__)
