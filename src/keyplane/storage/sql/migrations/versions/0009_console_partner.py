"""console accounts outside tenants: operator staff and partner developers (accounts), their
browser sessions (account_sessions), and the developer who registered a partner app
(oauth_apps.developer_id)

Revision ID: 0009_console_partner
Revises: 0008_hygiene
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_console_partner"
down_revision = "0009_console_admin"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.String(length=40)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("kind", "email", name="uq_accounts_kind_email"),
    )
    op.create_table(
        "account_sessions",
        sa.Column("id", ID, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pepper_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_account_sessions_account_id_accounts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_sessions")),
        sa.UniqueConstraint("digest", name=op.f("uq_account_sessions_digest")),
    )
    op.create_index("ix_account_sessions_account", "account_sessions", ["account_id"])
    with op.batch_alter_table("oauth_apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("developer_id", ID, nullable=True))
        batch_op.create_foreign_key("fk_oauth_apps_developer_id_accounts", "accounts",
                                    ["developer_id"], ["id"], ondelete="SET NULL")
        batch_op.create_index("ix_oauth_apps_developer", ["developer_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("oauth_apps", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_apps_developer")
        batch_op.drop_constraint("fk_oauth_apps_developer_id_accounts", type_="foreignkey")
        batch_op.drop_column("developer_id")
    op.drop_index("ix_account_sessions_account", table_name="account_sessions")
    op.drop_table("account_sessions")
    op.drop_table("accounts")
