"""proxies: the tenant policy api_users_need_group (an API user in no data-access group holds
no data scopes): on for every tenant made from now on; tenants that exist already keep today's
behaviour (off) so that an upgrade never stops a working integration; their admins turn it on

Revision ID: 0009_proxies
Revises: 0008_hygiene
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_proxies"
down_revision = "0008_hygiene"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_users_need_group", sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
    op.execute(sa.text("UPDATE tenants SET api_users_need_group = :off").bindparams(off=False))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("api_users_need_group")
