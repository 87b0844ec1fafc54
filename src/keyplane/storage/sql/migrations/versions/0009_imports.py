"""imports: keys brought in from elsewhere (key_imports: where each came from, whether it keeps
a foreign format, and its legacy digest until the first use upgrades it) and per-scope usage
(key_scope_usage: valid verifications per key, scope and day)

Revision ID: 0009_imports
Revises: 0008_hygiene
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_imports"
down_revision = "0009_events"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "key_imports",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("source_ref", sa.String(length=200), nullable=False),
        sa.Column("foreign_format", sa.Boolean(), nullable=False),
        sa.Column("legacy_scheme", sa.String(length=40), nullable=True),
        sa.Column("legacy_lookup", sa.String(length=80), nullable=True),
        sa.Column("legacy_digest", sa.String(length=255), nullable=True),
        sa.Column("imported_at", TS, nullable=False),
        sa.Column("upgraded_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"],
                                name=op.f("fk_key_imports_key_id_api_keys"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_key_imports")),
        sa.UniqueConstraint("source", "source_ref", name="uq_key_imports_source_ref"),
        sa.UniqueConstraint("legacy_lookup", name="uq_key_imports_legacy_lookup"),
    )
    op.create_index("ix_key_imports_foreign", "key_imports", ["foreign_format"])
    op.create_table(
        "key_scope_usage",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("day", TS, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "scope", "day", name=op.f("pk_key_scope_usage")),
    )


def downgrade() -> None:
    op.drop_table("key_scope_usage")
    op.drop_index("ix_key_imports_foreign", table_name="key_imports")
    op.drop_table("key_imports")
