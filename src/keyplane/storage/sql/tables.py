"""Table definitions (SQLAlchemy Core). Migrations in ``migrations/`` create and change them."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


ID = sa.String(40)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("default_expiry_days", sa.Integer, nullable=False),
    sa.Column("max_expiry_days", sa.Integer, nullable=True),
    sa.Column("allow_non_expiring", sa.Boolean, nullable=False),
    sa.Column("allowed_ips", sa.JSON, nullable=False),
    sa.Column("require_tls_default", sa.Boolean, nullable=False),
    sa.Column("leaked_key_action", sa.String(10), nullable=False,
              server_default="revoke"),  # 0006_leaks_shares
    sa.Column("revoke_unused_after_days", sa.Integer, nullable=True),  # 0008_hygiene
    sa.Column("api_users_need_group", sa.Boolean, nullable=False,
              server_default=sa.true()),  # 0009_proxies
    sa.Column("audit_retention_days", sa.Integer, nullable=True),  # 0009_audit_chain
    sa.Column("require_admin_two_factor", sa.Boolean, nullable=False,
              server_default=sa.false()),  # 0009_console_auth
)

principals = sa.Table(
    "principals",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=True),  # unique per tenant (0005)
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_principals_tenant", "tenant_id", "id"),
    sa.Index("ix_principals_email", "email"),  # sign-in finds a person's memberships
    sa.UniqueConstraint("tenant_id", "email", name="uq_principals_tenant_email"),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "name", name="uq_groups_tenant_name"),
)

principal_groups = sa.Table(
    "principal_groups",
    metadata,
    sa.Column(
        "principal_id", ID, sa.ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("group_id", ID, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_principal_groups_group", "group_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    sa.Column(
        "owner_id", ID, sa.ForeignKey("principals.id", ondelete="SET NULL"), nullable=True
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("start", sa.String(8), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_by", sa.String(80), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("lifetime_days", sa.Integer, nullable=True),
    sa.Column("allowed_ips", sa.JSON, nullable=False),
    sa.Column("require_tls", sa.Boolean, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("ratelimit", sa.JSON, nullable=True),
    sa.Column("remaining_uses", sa.BigInteger, nullable=True),  # usage quota (0002_usage)
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("leaked_at", UTCDateTime, nullable=True),  # 0006_leaks_shares
    sa.Column("leak_url", sa.String(2000), nullable=True),
    sa.Column("leak_source", sa.String(200), nullable=True),
    # when the unused-key policy last warned the owner (0008_hygiene)
    sa.Column("unused_warned_at", UTCDateTime, nullable=True),
    sa.Index("ix_api_keys_tenant", "tenant_id", "id"),
    sa.Index("ix_api_keys_owner", "owner_id"),
)

key_secrets = sa.Table(
    "key_secrets",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("key_id", ID, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("start", sa.String(8), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Index("ix_key_secrets_key", "key_id"),
)

scopes = sa.Table(
    "scopes",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("tenant_id", ID, nullable=True),
    sa.Column("actor", sa.String(80), nullable=False),
    sa.Column("action", sa.String(60), nullable=False),
    sa.Column("target", sa.String(80), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
    # 0009_audit_chain: the credential, the client, before/after, and the tenant's hash chain
    sa.Column("credential", sa.String(80), nullable=True),
    sa.Column("user_agent", sa.String(200), nullable=True),
    sa.Column("changes", sa.JSON, nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("hash", sa.String(64), nullable=True),
    sa.Index("ix_audit_events_tenant", "tenant_id", "id"),
    sa.Index("ix_audit_events_chain", "tenant_id", "seq"),
)

# one row per audit chain (a tenant's id, or "-" for the operator's entries): the head that
# appends lock (FOR UPDATE) so each tenant's entries are numbered one at a time, and the
# checkpoint that pruning leaves so the rest still verifies (0009_audit_chain)
audit_chains = sa.Table(
    "audit_chains",
    metadata,
    sa.Column("chain", ID, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("pruned_seq", sa.BigInteger, nullable=False),
    sa.Column("pruned_hash", sa.String(64), nullable=False),
    sa.Column("pruned_at", UTCDateTime, nullable=True),
)

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("ref", sa.String(40), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

from keyplane.storage.sql import hygiene as _hygiene_tables  # noqa: E402,F401
from keyplane.storage.sql import imports as _imports_tables  # noqa: E402,F401
from keyplane.storage.sql import oauth_tables as _oauth_tables  # noqa: E402,F401
from keyplane.storage.sql import safety as _safety_tables  # noqa: E402,F401
from keyplane.storage.sql import sign_in as _sign_in_tables  # noqa: E402,F401
from keyplane.storage.sql import usage as _usage_tables  # noqa: E402,F401
from keyplane.storage.sql import webhook_tables as _webhook_tables  # noqa: E402,F401
