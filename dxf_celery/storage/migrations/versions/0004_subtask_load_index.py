"""subtask load index: the scheduler's per (state, task, node) aggregate over live rows only

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# As this revision froze it (not imported from the models, so later changes never rewrite it).
ACTIVE_PREDICATE = "state IN ('pending', 'running')"


def upgrade() -> None:
    with op.batch_alter_table("dxf_subtask", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dxf_subtask_load",
            ["state", "task_id", "exec_id", "concurrency", "id"],
            unique=False,
            postgresql_where=sa.text(ACTIVE_PREDICATE),
            sqlite_where=sa.text(ACTIVE_PREDICATE),
        )


def downgrade() -> None:
    with op.batch_alter_table("dxf_subtask", schema=None) as batch_op:
        batch_op.drop_index("ix_dxf_subtask_load")
