"""audit chain: every audit entry records its credential, user agent and before/after, and is
hash-chained per tenant (audit_events.seq/prev_hash/hash, one audit_chains head per tenant with
the pruning checkpoint); tenants.audit_retention_days. Existing entries are chained here, in id
order (ids sort by time), with the same hash the application uses.

Revision ID: 0009_audit_chain
Revises: 0008_hygiene
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import sqlalchemy as sa
from alembic import op

from keyplane.core.audit_chain import GENESIS, chain_of, seal
from keyplane.core.model import AuditEvent

revision = "0009_audit_chain"
down_revision = "0009_console_partner"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("changes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_audit_events_chain", ["tenant_id", "seq"], unique=False)
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audit_retention_days", sa.Integer(), nullable=True))
    op.create_table(
        "audit_chains",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("pruned_seq", sa.BigInteger(), nullable=False),
        sa.Column("pruned_hash", sa.String(length=64), nullable=False),
        sa.Column("pruned_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_chains")),
    )
    _chain_existing()


def _chain_existing() -> None:
    """Number and hash the entries written before this revision, tenant by tenant."""
    conn = op.get_bind()
    events = sa.table(
        "audit_events", sa.column("id"), sa.column("at", TS), sa.column("tenant_id"),
        sa.column("actor"), sa.column("action"), sa.column("target"), sa.column("outcome"),
        sa.column("ip"), sa.column("request_id"), sa.column("details", sa.JSON()),
        sa.column("seq"), sa.column("prev_hash"), sa.column("hash"),
    )
    chains = sa.table("audit_chains", sa.column("chain"), sa.column("seq"), sa.column("hash"),
                      sa.column("pruned_seq"), sa.column("pruned_hash"))
    tenants = [r[0] for r in conn.execute(sa.select(events.c.tenant_id).distinct())]
    for tenant_id in tenants:
        cond = (events.c.tenant_id.is_(None) if tenant_id is None
                else events.c.tenant_id == tenant_id)
        seq, prev = 0, GENESIS
        last_id = ""
        while True:
            rows: list[Any] = list(conn.execute(
                sa.select(events).where(cond, events.c.id > last_id)
                .order_by(events.c.id).limit(BATCH)).mappings())
            if not rows:
                break
            for r in rows:
                at = r["at"]
                if at.tzinfo is None:  # SQLite stores UTC without the zone
                    at = at.replace(tzinfo=UTC)
                event = AuditEvent(
                    id=r["id"], at=at, tenant_id=r["tenant_id"], actor=r["actor"],
                    action=r["action"], target=r["target"], outcome=r["outcome"], ip=r["ip"],
                    request_id=r["request_id"], details=dict(r["details"] or {}))
                seq += 1
                prev = seal(event, seq, prev)
                conn.execute(events.update().where(events.c.id == r["id"])
                             .values(seq=event.seq, prev_hash=event.prev_hash, hash=prev))
                last_id = r["id"]
        conn.execute(chains.insert().values(chain=chain_of(tenant_id), seq=seq, hash=prev,
                                            pruned_seq=0, pruned_hash=GENESIS))


def downgrade() -> None:
    op.drop_table("audit_chains")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("audit_retention_days")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_chain")
        for column in ("hash", "prev_hash", "seq", "changes", "user_agent", "credential"):
            batch_op.drop_column(column)
