"""hygiene: the unused-key policy (tenants.revoke_unused_after_days, api_keys.unused_warned_at)
and job leases (one row per periodic job, so one instance runs it)

Revision ID: 0008_hygiene
Revises: 0007_webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_hygiene"
down_revision = "0007_webhooks"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoke_unused_after_days", sa.Integer(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unused_warned_at", TS, nullable=True))
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("owner", sa.String(length=80), nullable=True),
        sa.Column("last_run_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("unused_warned_at")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("revoke_unused_after_days")
