"""subtask claim index: only pending and running rows (partial on PostgreSQL and SQLite)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# As this revision froze it (not imported from the models, so later changes never rewrite it).
ACTIVE_PREDICATE = "state IN ('pending', 'running')"


def upgrade() -> None:
    with op.batch_alter_table("dxf_subtask", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dxf_subtask_claim",
            ["task_id", "exec_id", "step", "state", "id"],
            unique=False,
            postgresql_where=sa.text(ACTIVE_PREDICATE),
            sqlite_where=sa.text(ACTIVE_PREDICATE),
        )


def downgrade() -> None:
    with op.batch_alter_table("dxf_subtask", schema=None) as batch_op:
        batch_op.drop_index("ix_dxf_subtask_claim")
