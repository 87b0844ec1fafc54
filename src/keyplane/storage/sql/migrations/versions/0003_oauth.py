"""connected apps: partner apps, client secrets, connections, codes, tokens, web sessions

Revision ID: 0003_oauth
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_oauth"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.String(length=40)
COUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "oauth_apps",
        sa.Column("id", ID, nullable=False),
        sa.Column("client_id", ID, nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("homepage", sa.String(length=2000), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.String(length=1000), nullable=False),
        sa.Column("owner_tenant_id", ID, nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("approved_at", TS, nullable=True),
        _fk("oauth_apps", "owner_tenant_id", "tenants", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_apps")),
        sa.UniqueConstraint("client_id", name=op.f("uq_oauth_apps_client_id")),
    )
    op.create_index("ix_oauth_apps_owner", "oauth_apps", ["owner_tenant_id", "id"])

    op.create_table(
        "oauth_client_secrets",
        sa.Column("id", ID, nullable=False),
        sa.Column("app_id", ID, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pepper_id", sa.String(length=40), nullable=False),
        sa.Column("start", sa.String(length=8), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        _fk("oauth_client_secrets", "app_id", "oauth_apps", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_client_secrets")),
        sa.UniqueConstraint("digest", name=op.f("uq_oauth_client_secrets_digest")),
    )
    op.create_index("ix_oauth_client_secrets_app", "oauth_client_secrets", ["app_id"])

    op.create_table(
        "oauth_connections",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("app_id", ID, nullable=False),
        sa.Column("principal_id", ID, nullable=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoked_reason", sa.String(length=200), nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("request_count", COUNT, nullable=False),
        sa.Column("denied_count", COUNT, nullable=False),
        _fk("oauth_connections", "tenant_id", "tenants", "CASCADE"),
        _fk("oauth_connections", "app_id", "oauth_apps", "CASCADE"),
        _fk("oauth_connections", "principal_id", "principals", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_connections")),
    )
    op.create_index("ix_oauth_connections_tenant", "oauth_connections", ["tenant_id", "id"])
    op.create_index("ix_oauth_connections_app", "oauth_connections", ["app_id"])

    op.create_table(
        "oauth_codes",
        sa.Column("id", ID, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pepper_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", ID, nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("principal_id", ID, nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2000), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("code_challenge_method", sa.String(length=10), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("connection_id", ID, nullable=True),
        _fk("oauth_codes", "app_id", "oauth_apps", "CASCADE"),
        _fk("oauth_codes", "tenant_id", "tenants", "CASCADE"),
        _fk("oauth_codes", "principal_id", "principals", "CASCADE"),
        _fk("oauth_codes", "connection_id", "oauth_connections", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_codes")),
        sa.UniqueConstraint("digest", name=op.f("uq_oauth_codes_digest")),
    )

    op.create_table(
        "oauth_tokens",
        sa.Column("id", ID, nullable=False),
        sa.Column("connection_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pepper_id", sa.String(length=40), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("rotated_at", TS, nullable=True),
        sa.Column("parent_id", ID, nullable=True),
        _fk("oauth_tokens", "connection_id", "oauth_connections", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_oauth_tokens_digest")),
    )
    op.create_index("ix_oauth_tokens_connection", "oauth_tokens", ["connection_id"])

    op.create_table(
        "web_sessions",
        sa.Column("id", ID, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pepper_id", sa.String(length=40), nullable=False),
        sa.Column("principal_id", ID, nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        _fk("web_sessions", "principal_id", "principals", "CASCADE"),
        _fk("web_sessions", "tenant_id", "tenants", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("digest", name=op.f("uq_web_sessions_digest")),
    )
    op.create_index("ix_web_sessions_principal", "web_sessions", ["principal_id"])


def downgrade() -> None:
    op.drop_index("ix_web_sessions_principal", table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_index("ix_oauth_tokens_connection", table_name="oauth_tokens")
    op.drop_table("oauth_tokens")
    op.drop_table("oauth_codes")
    op.drop_index("ix_oauth_connections_app", table_name="oauth_connections")
    op.drop_index("ix_oauth_connections_tenant", table_name="oauth_connections")
    op.drop_table("oauth_connections")
    op.drop_index("ix_oauth_client_secrets_app", table_name="oauth_client_secrets")
    op.drop_table("oauth_client_secrets")
    op.drop_index("ix_oauth_apps_owner", table_name="oauth_apps")
    op.drop_table("oauth_apps")
