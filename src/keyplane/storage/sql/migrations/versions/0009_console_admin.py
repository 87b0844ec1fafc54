"""key_denials: a key's newest refused verifications with their reason, for the console's key
page (at most a few per key: the usage recorder prunes them)

Revision ID: 0009_console_admin
Revises: 0008_hygiene
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_console_admin"
down_revision = "0009_imports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_denials",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_denials")),
    )
    op.create_index("ix_key_denials_key_id_at", "key_denials", ["key_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_key_denials_key_id_at", table_name="key_denials")
    op.drop_table("key_denials")
