"""leaked-key info on keys, the tenant's leaked-key policy, one-time share links, and digests of
accepted secret-scanning reports (replay refusal)

Revision ID: 0006_leaks_shares
Revises: 0005_email_per_tenant
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_leaks_shares"
down_revision = "0005_email_per_tenant"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leaked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("leak_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("leak_source", sa.String(length=200), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leaked_key_action", sa.String(length=10), nullable=False,
                                      server_default="revoke"))
    op.create_table(
        "shares",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name=op.f("fk_shares_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
    )
    op.create_index("ix_shares_tenant", "shares", ["tenant_id", "id"])
    op.create_index("ix_shares_expires", "shares", ["expires_at"])
    op.create_table(
        "scanning_reports",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_scanning_reports")),
    )
    op.create_index("ix_scanning_reports_received", "scanning_reports", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_scanning_reports_received", table_name="scanning_reports")
    op.drop_table("scanning_reports")
    op.drop_index("ix_shares_expires", table_name="shares")
    op.drop_index("ix_shares_tenant", table_name="shares")
    op.drop_table("shares")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("leaked_key_action")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("leak_source")
        batch_op.drop_column("leak_url")
        batch_op.drop_column("leaked_at")
