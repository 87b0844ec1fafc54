"""Webhook endpoints, the outbox and deliveries over the unit of work's connection.

Claiming is one short transaction: due deliveries of enabled endpoints whose lease is free are
locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers take different rows;
SQLite serialises writers with ``BEGIN IMMEDIATE``) and given a lease. Results are recorded
only by the lease's owner.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from keyplane.core.model import Page
from keyplane.core.ports import UnitOfWork, WebhookRepo
from keyplane.core.webhooks import Claimed, Delivery, DeliveryStatus, Outcome, Webhook
from keyplane.storage.sql.repositories import _newest_first, _page
from keyplane.storage.sql.webhook_tables import webhook_deliveries, webhook_events, webhooks

W = webhooks.c
D = webhook_deliveries.c


def _webhook(r: RowMapping) -> Webhook:
    return Webhook(
        id=r["id"], tenant_id=r["tenant_id"], url=r["url"], description=r["description"],
        events=list(r["events"]), enabled=r["enabled"], secret=r["secret"],
        created_at=r["created_at"], updated_at=r["updated_at"], created_by=r["created_by"],
        previous_secret=r["previous_secret"],
        previous_secret_expires_at=r["previous_secret_expires_at"],
        disabled_reason=r["disabled_reason"], disabled_at=r["disabled_at"],
        failing_since=r["failing_since"], consecutive_failures=r["consecutive_failures"],
    )


def _webhook_row(w: Webhook) -> dict[str, Any]:
    return {c.name: getattr(w, c.name) for c in webhooks.columns}


def _delivery(r: RowMapping) -> Delivery:
    return Delivery(
        id=r["id"], webhook_id=r["webhook_id"], tenant_id=r["tenant_id"],
        event_id=r["event_id"], event_type=r["event_type"], status=DeliveryStatus(r["status"]),
        attempts=r["attempts"], created_at=r["created_at"],
        next_attempt_at=r["next_attempt_at"], deadline=r["deadline"],
        last_attempt_at=r["last_attempt_at"], delivered_at=r["delivered_at"],
        response_status=r["response_status"], latency_ms=r["latency_ms"],
        last_error=r["last_error"], lease_until=r["lease_until"],
    )


class SqlWebhooks:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- endpoints ---------------------------------------------------------------------------

    def add(self, webhook: Webhook) -> None:
        self.conn.execute(webhooks.insert().values(**_webhook_row(webhook)))

    def get(self, tenant_id: str, webhook_id: str, *, for_update: bool = False) -> (
        Webhook | None
    ):
        q = webhooks.select().where(W.id == webhook_id, W.tenant_id == tenant_id)
        if for_update:
            q = q.with_for_update()
        row = self.conn.execute(q).mappings().first()
        return _webhook(row) if row else None

    def update(self, webhook: Webhook) -> None:
        row = _webhook_row(webhook)
        row.pop("id")
        self.conn.execute(webhooks.update().where(W.id == webhook.id).values(**row))

    def delete(self, tenant_id: str, webhook_id: str) -> None:
        self.conn.execute(webhook_deliveries.delete().where(D.webhook_id == webhook_id))
        self.conn.execute(webhooks.delete().where(W.id == webhook_id, W.tenant_id == tenant_id))

    def page(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[Webhook]:
        q = _newest_first(webhooks.select().where(W.tenant_id == tenant_id), W.id, cursor, limit)
        return _page(list(self.conn.execute(q).mappings()), limit, _webhook)

    def subscribers(self, tenant_id: str) -> list[Webhook]:
        q = webhooks.select().where(W.tenant_id == tenant_id, W.enabled.is_(True))
        return [_webhook(r) for r in self.conn.execute(q).mappings()]

    # -- the outbox --------------------------------------------------------------------------

    def add_event(self, event_id: str, tenant_id: str, event_type: str, payload: str,
                  at: datetime) -> None:
        self.conn.execute(webhook_events.insert().values(
            id=event_id, tenant_id=tenant_id, type=event_type, payload=payload, created_at=at))

    def add_delivery(self, delivery: Delivery) -> None:
        self.conn.execute(webhook_deliveries.insert().values(
            id=delivery.id, webhook_id=delivery.webhook_id, event_id=delivery.event_id,
            tenant_id=delivery.tenant_id, event_type=delivery.event_type,
            status=delivery.status.value, attempts=delivery.attempts,
            created_at=delivery.created_at, next_attempt_at=delivery.next_attempt_at,
            deadline=delivery.deadline))

    def delivery(self, webhook_id: str, delivery_id: str) -> Delivery | None:
        row = self.conn.execute(webhook_deliveries.select().where(
            D.id == delivery_id, D.webhook_id == webhook_id)).mappings().first()
        return _delivery(row) if row else None

    def deliveries(self, webhook_id: str, *, status: str | None, limit: int,
                   cursor: str | None) -> Page[Delivery]:
        q = webhook_deliveries.select().where(D.webhook_id == webhook_id)
        if status is not None:
            q = q.where(D.status == status)
        q = _newest_first(q, D.id, cursor, limit)
        return _page(list(self.conn.execute(q).mappings()), limit, _delivery)

    def update_delivery(self, delivery: Delivery) -> None:
        self.conn.execute(webhook_deliveries.update().where(D.id == delivery.id).values(
            status=delivery.status.value, attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at, deadline=delivery.deadline,
            lease_until=None, lease_owner=None))

    # -- the worker --------------------------------------------------------------------------

    @staticmethod
    def _due(now: datetime) -> sa.Select[Any]:
        return (
            sa.select(D.id)
            .select_from(webhook_deliveries.join(webhooks, W.id == D.webhook_id))
            .where(D.status == DeliveryStatus.PENDING.value, D.next_attempt_at <= now,
                   sa.or_(D.lease_until.is_(None), D.lease_until <= now),
                   W.enabled.is_(True))
        )

    def due(self, now: datetime) -> bool:
        return self.conn.execute(self._due(now).limit(1)).first() is not None

    def claim(self, owner: str, now: datetime, lease_until: datetime,
              limit: int) -> list[Claimed]:
        due = self._due(now).order_by(D.next_attempt_at).limit(limit)
        if self.conn.dialect.name == "postgresql":
            due = due.with_for_update(of=webhook_deliveries, skip_locked=True)
        ids = [i for (i,) in self.conn.execute(due)]
        if not ids:
            return []
        self.conn.execute(webhook_deliveries.update().where(D.id.in_(ids)).values(
            lease_until=lease_until, lease_owner=owner))
        rows = self.conn.execute(
            sa.select(D.id, D.webhook_id, D.tenant_id, D.event_id, D.attempts, D.deadline,
                      W.url, W.secret, W.previous_secret, W.previous_secret_expires_at,
                      webhook_events.c.payload)
            .select_from(webhook_deliveries.join(webhooks, W.id == D.webhook_id)
                         .join(webhook_events, webhook_events.c.id == D.event_id))
            .where(D.id.in_(ids))
        ).mappings()
        out = []
        for r in rows:
            secrets = [r["secret"]]
            expires = r["previous_secret_expires_at"]
            if r["previous_secret"] and expires is not None and expires > now:
                secrets.append(r["previous_secret"])
            out.append(Claimed(
                delivery_id=r["id"], webhook_id=r["webhook_id"], tenant_id=r["tenant_id"],
                event_id=r["event_id"], url=r["url"], payload=r["payload"],
                attempts=r["attempts"], deadline=r["deadline"], secrets=tuple(secrets)))
        return out

    def record(self, delivery_id: str, owner: str, attempt: Outcome, now: datetime, *,
               status: DeliveryStatus, next_attempt_at: datetime | None) -> bool:
        values: dict[str, Any] = {
            "attempts": D.attempts + 1, "status": status.value, "last_attempt_at": now,
            "response_status": attempt.status_code, "latency_ms": attempt.latency_ms,
            "last_error": (attempt.error or "")[:500] or None,
            "lease_until": None, "lease_owner": None,
        }
        if status is DeliveryStatus.SUCCEEDED:
            values["delivered_at"] = now
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        result = self.conn.execute(webhook_deliveries.update().where(
            D.id == delivery_id, D.lease_owner == owner).values(**values))
        return bool(result.rowcount)

    def mark_success(self, webhook_id: str) -> None:
        # written only when there is something to reset: no lock on a healthy endpoint's row
        self.conn.execute(webhooks.update().where(
            W.id == webhook_id,
            sa.or_(W.consecutive_failures > 0, W.failing_since.is_not(None)),
        ).values(consecutive_failures=0, failing_since=None))

    def prune(self, before: datetime) -> int:
        """Removes finished deliveries created before ``before``, then events left with no
        delivery. Pending deliveries are never removed."""
        done = self.conn.execute(webhook_deliveries.delete().where(
            D.status != DeliveryStatus.PENDING.value, D.created_at < before))
        E = webhook_events.c
        self.conn.execute(webhook_events.delete().where(
            E.created_at < before,
            ~sa.exists().where(D.event_id == E.id)))
        return int(done.rowcount or 0)

    def backlog(self) -> tuple[int, datetime | None]:
        row = self.conn.execute(sa.select(sa.func.count(), sa.func.min(D.created_at)).where(
            D.status == DeliveryStatus.PENDING.value)).one()
        oldest = row[1]
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite's aggregate skips the column type
        return int(row[0]), oldest


def webhook_repo(uow: UnitOfWork) -> WebhookRepo:
    conn: Connection = getattr(uow, "connection")  # noqa: B009 - SqlUnitOfWork only
    return SqlWebhooks(conn)
