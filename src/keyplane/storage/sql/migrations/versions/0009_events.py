"""events: expiry reminders sent (once per key, threshold and expiry), the networks each key
was used from, refusal counts per key and window, and automation rules

Revision ID: 0009_events
Revises: 0008_hygiene
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_events"
down_revision = "0009_proxies"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.String(length=40)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "key_reminders",
        sa.Column("key_id", ID, nullable=False),
        sa.Column("threshold_days", sa.Integer(), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("sent_by", sa.String(length=80), nullable=False),
        _fk("key_reminders", "key_id", "api_keys"),
        sa.PrimaryKeyConstraint("key_id", "threshold_days", "expires_at",
                                name=op.f("pk_key_reminders")),
    )
    op.create_table(
        "key_networks",
        sa.Column("key_id", ID, nullable=False),
        sa.Column("network", sa.String(length=50), nullable=False),
        sa.Column("last_address", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        _fk("key_networks", "key_id", "api_keys"),
        sa.PrimaryKeyConstraint("key_id", "network", name=op.f("pk_key_networks")),
    )
    op.create_table(
        "key_denial_windows",
        sa.Column("key_id", ID, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("alerted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("key_id", "window_start", name=op.f("pk_key_denial_windows")),
    )
    op.create_table(
        "automations",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("event", sa.String(length=90), nullable=False),
        sa.Column("key_id", ID, nullable=True),
        sa.Column("principal_id", ID, nullable=True),
        sa.Column("app_id", ID, nullable=True),
        sa.Column("webhook_ids", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        _fk("automations", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_automations")),
    )
    op.create_index("ix_automations_tenant", "automations", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_automations_tenant", table_name="automations")
    op.drop_table("automations")
    op.drop_table("key_denial_windows")
    op.drop_table("key_networks")
    op.drop_table("key_reminders")
