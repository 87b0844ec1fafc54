"""Tables of connected apps: partner apps, client secrets, codes, connections, tokens, sessions.

Every secret (client secret, code, access and refresh token, session id) is stored only as a
keyed digest; migration ``0003_oauth`` creates these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

from keyplane.storage.sql import account_tables  # noqa: F401  (apps reference accounts)
from keyplane.storage.sql.tables import ID, UTCDateTime, metadata

DIGEST = sa.String(64)
COUNT = sa.BigInteger().with_variant(sa.Integer, "sqlite")

oauth_apps = sa.Table(
    "oauth_apps",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("client_id", ID, nullable=True, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("homepage", sa.String(2000), nullable=False),
    sa.Column("redirect_uris", sa.JSON, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("status_reason", sa.String(1000), nullable=False),
    sa.Column("owner_tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"),
              nullable=True),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("approved_at", UTCDateTime, nullable=True),
    # migration 0009: the partner developer who registered it (None: a tenant or the operator)
    sa.Column("developer_id", ID, sa.ForeignKey("accounts.id", ondelete="SET NULL"),
              nullable=True),
    sa.Index("ix_oauth_apps_owner", "owner_tenant_id", "id"),
    sa.Index("ix_oauth_apps_developer", "developer_id", "id"),
)

oauth_client_secrets = sa.Table(
    "oauth_client_secrets",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("app_id", ID, sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"), nullable=False),
    sa.Column("digest", DIGEST, nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("start", sa.String(8), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Index("ix_oauth_client_secrets_app", "app_id"),
)

oauth_connections = sa.Table(
    "oauth_connections",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("app_id", ID, sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"), nullable=False),
    sa.Column("principal_id", ID, sa.ForeignKey("principals.id", ondelete="SET NULL"),
              nullable=True),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("revoked_reason", sa.String(200), nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("request_count", COUNT, nullable=False),
    sa.Column("denied_count", COUNT, nullable=False),
    sa.Index("ix_oauth_connections_tenant", "tenant_id", "id"),
    sa.Index("ix_oauth_connections_app", "app_id"),
)

oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("digest", DIGEST, nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("app_id", ID, sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"), nullable=False),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("principal_id", ID, sa.ForeignKey("principals.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("redirect_uri", sa.String(2000), nullable=False),
    sa.Column("code_challenge", sa.String(128), nullable=False),
    sa.Column("code_challenge_method", sa.String(10), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=True),
    sa.Column("connection_id", ID,
              sa.ForeignKey("oauth_connections.id", ondelete="SET NULL"), nullable=True),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("connection_id", ID, sa.ForeignKey("oauth_connections.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("digest", DIGEST, nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("rotated_at", UTCDateTime, nullable=True),
    sa.Column("parent_id", ID, nullable=True),
    sa.Index("ix_oauth_tokens_connection", "connection_id"),
)

web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("digest", DIGEST, nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("principal_id", ID, sa.ForeignKey("principals.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    # when the person last proved their second factor in this session (0009_console_auth)
    sa.Column("second_factor_at", UTCDateTime, nullable=True),
    sa.Index("ix_web_sessions_principal", "principal_id"),
)
