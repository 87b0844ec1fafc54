"""Tables of console accounts outside tenants (operator staff, partner developers) and their
browser sessions; migration ``0009_console_partner`` creates them. Passwords are argon2
hashes; a session is stored only as a keyed digest of its cookie."""

from __future__ import annotations

import sqlalchemy as sa

from keyplane.storage.sql.tables import ID, UTCDateTime, metadata

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.UniqueConstraint("kind", "email", name="uq_accounts_kind_email"),
)

account_sessions = sa.Table(
    "account_sessions",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("pepper_id", sa.String(40), nullable=False),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Index("ix_account_sessions_account", "account_id"),
)
