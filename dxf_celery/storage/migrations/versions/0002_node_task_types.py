"""dxf_node.task_types: the task types each node registered

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# The column type as this revision froze it (not imported from the models).
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mariadb").with_variant(mysql.MEDIUMTEXT(), "mysql")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: rows of nodes that registered before (or run an older version) say "unknown".
    op.add_column("dxf_node", sa.Column("task_types", LONG_TEXT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dxf_node", schema=None) as batch_op:
        batch_op.drop_column("task_types")
