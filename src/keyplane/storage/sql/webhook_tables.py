"""Webhook endpoints, the event outbox and one delivery row per (event, endpoint).

A delivery row holds all of its retry state (attempts, next_attempt_at, lease_until), so a
restart or a SIGKILL loses nothing: an expired lease makes a delivery claimable again.
"""

from __future__ import annotations

import sqlalchemy as sa

from keyplane.storage.sql.tables import ID, UTCDateTime, metadata

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("events", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("secret", sa.String(400), nullable=False),  # sealed (AES-GCM), never in clear
    sa.Column("previous_secret", sa.String(400), nullable=True),
    sa.Column("previous_secret_expires_at", UTCDateTime, nullable=True),
    sa.Column("created_by", sa.String(80), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("disabled_reason", sa.String(500), nullable=True),
    sa.Column("disabled_at", UTCDateTime, nullable=True),
    sa.Column("failing_since", UTCDateTime, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.Index("ix_webhooks_tenant", "tenant_id", "id"),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", ID, primary_key=True),  # the webhook-id header of every attempt
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("type", sa.String(60), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the exact JSON body that is signed
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_webhook_events_tenant", "tenant_id", "id"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("webhook_id", ID, sa.ForeignKey("webhooks.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("event_id", ID, sa.ForeignKey("webhook_events.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("tenant_id", ID, nullable=False),
    sa.Column("event_type", sa.String(60), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("deadline", UTCDateTime, nullable=False),
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("response_status", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    sa.Index("ix_webhook_deliveries_event", "event_id"),
)
