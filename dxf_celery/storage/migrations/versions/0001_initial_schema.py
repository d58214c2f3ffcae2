"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# Column types as the 0001 schema froze them (kept here, not imported, so later model
# changes never rewrite history).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql")
BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mariadb").with_variant(mysql.LONGBLOB(), "mysql")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mariadb").with_variant(mysql.MEDIUMTEXT(), "mysql")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dxf_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=261), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_dxf_lease")),
    )
    op.create_table(
        "dxf_node",
        sa.Column("host", sa.String(length=261), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("heartbeat", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_dxf_node")),
    )
    op.create_table(
        "dxf_subtask",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("exec_id", sa.String(length=261), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("meta", BLOB, nullable=False),
        sa.Column("summary", LONG_TEXT, nullable=False),
        sa.Column("checkpoint", LONG_TEXT, nullable=False),
        sa.Column("error", LONG_TEXT, nullable=True),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=True),
        sa.Column("state_update_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dxf_subtask")),
        sa.UniqueConstraint("task_id", "step", "ordinal", name="uq_dxf_subtask_task_step_ordinal"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("dxf_subtask", schema=None) as batch_op:
        batch_op.create_index("ix_dxf_subtask_exec_state", ["exec_id", "state"], unique=False)
        batch_op.create_index("ix_dxf_subtask_task_step_state", ["task_id", "step", "state"], unique=False)

    op.create_table(
        "dxf_subtask_history",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("exec_id", sa.String(length=261), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("meta", BLOB, nullable=False),
        sa.Column("summary", LONG_TEXT, nullable=False),
        sa.Column("checkpoint", LONG_TEXT, nullable=False),
        sa.Column("error", LONG_TEXT, nullable=True),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=True),
        sa.Column("state_update_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dxf_subtask_history")),
    )
    with op.batch_alter_table("dxf_subtask_history", schema=None) as batch_op:
        batch_op.create_index("ix_dxf_subtask_history_state_update_time", ["state_update_time"], unique=False)
        batch_op.create_index("ix_dxf_subtask_history_task_id", ["task_id"], unique=False)

    op.create_table(
        "dxf_task",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("task_key", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("target_scope", sa.String(length=256), nullable=False),
        sa.Column("max_node_count", sa.Integer(), nullable=False),
        sa.Column("extra_params", sa.Text(), nullable=True),
        sa.Column("meta", BLOB, nullable=True),
        sa.Column("error", LONG_TEXT, nullable=True),
        sa.Column("modify_params", sa.Text(), nullable=True),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=True),
        sa.Column("state_update_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dxf_task")),
        sa.UniqueConstraint("task_key", name="uq_dxf_task_task_key"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("dxf_task", schema=None) as batch_op:
        batch_op.create_index("ix_dxf_task_state", ["state"], unique=False)

    op.create_table(
        "dxf_task_history",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("task_key", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("target_scope", sa.String(length=256), nullable=False),
        sa.Column("max_node_count", sa.Integer(), nullable=False),
        sa.Column("extra_params", sa.Text(), nullable=True),
        sa.Column("meta", BLOB, nullable=True),
        sa.Column("error", LONG_TEXT, nullable=True),
        sa.Column("modify_params", sa.Text(), nullable=True),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=True),
        sa.Column("state_update_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dxf_task_history")),
        sa.UniqueConstraint("task_key", name="uq_dxf_task_history_task_key"),
    )
    with op.batch_alter_table("dxf_task_history", schema=None) as batch_op:
        batch_op.create_index("ix_dxf_task_history_state", ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dxf_task_history", schema=None) as batch_op:
        batch_op.drop_index("ix_dxf_task_history_state")

    op.drop_table("dxf_task_history")
    with op.batch_alter_table("dxf_task", schema=None) as batch_op:
        batch_op.drop_index("ix_dxf_task_state")

    op.drop_table("dxf_task")
    with op.batch_alter_table("dxf_subtask_history", schema=None) as batch_op:
        batch_op.drop_index("ix_dxf_subtask_history_task_id")
        batch_op.drop_index("ix_dxf_subtask_history_state_update_time")

    op.drop_table("dxf_subtask_history")
    with op.batch_alter_table("dxf_subtask", schema=None) as batch_op:
        batch_op.drop_index("ix_dxf_subtask_task_step_state")
        batch_op.drop_index("ix_dxf_subtask_exec_state")

    op.drop_table("dxf_subtask")
    op.drop_table("dxf_node")
    op.drop_table("dxf_lease")
