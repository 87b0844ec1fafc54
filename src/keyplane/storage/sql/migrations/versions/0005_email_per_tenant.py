"""member emails are unique per tenant, not across tenants (a person may belong to several)

Revision ID: 0005_email_per_tenant
Revises: 0004_merge

On SQLite, batch mode rebuilds ``principals``; ``migrate.upgrade`` turns foreign keys off for
the run, so dropping the old table does not cascade into memberships, keys and sessions.
"""

from __future__ import annotations

from alembic import op

revision = "0005_email_per_tenant"
down_revision = "0004_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_constraint("uq_principals_email", type_="unique")
        batch_op.create_unique_constraint("uq_principals_tenant_email", ["tenant_id", "email"])
        batch_op.create_index("ix_principals_email", ["email"], unique=False)


def downgrade() -> None:
    # fails while one email belongs to several tenants: that data has no place in the old schema
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_index("ix_principals_email")
        batch_op.drop_constraint("uq_principals_tenant_email", type_="unique")
        batch_op.create_unique_constraint("uq_principals_email", ["email"])
