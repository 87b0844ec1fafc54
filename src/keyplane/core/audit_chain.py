"""The audit log's hash chain: each tenant's entries are numbered 1, 2, 3... and each entry's
hash covers the previous entry's hash and the entry itself (SHA-256 over canonical JSON), so
an edited, removed or reordered entry breaks the chain where it happened.

Entries of no tenant (the operator's) form one more chain, named ``-``. Pruning old entries
keeps a checkpoint: the last pruned sequence number and its hash, where verification resumes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from keyplane.core.model import AuditEvent

GENESIS = "0" * 64  # the "previous hash" of a chain's first entry
PLATFORM_CHAIN = "-"  # the chain of entries that belong to no tenant


def chain_of(tenant_id: str | None) -> str:
    return tenant_id if tenant_id is not None else PLATFORM_CHAIN


def tenant_of(chain: str) -> str | None:
    return None if chain == PLATFORM_CHAIN else chain


def canonical(event: AuditEvent) -> bytes:
    """The entry as the hash sees it: every recorded field, keys sorted, no spaces, UTF-8."""
    at = event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body: dict[str, Any] = {
        "seq": event.seq, "id": event.id, "at": at, "tenant_id": event.tenant_id,
        "actor": event.actor, "credential": event.credential, "action": event.action,
        "target": event.target, "outcome": event.outcome, "ip": event.ip,
        "user_agent": event.user_agent, "request_id": event.request_id,
        "details": event.details, "changes": event.changes,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def entry_hash(prev_hash: str, event: AuditEvent) -> str:
    """H(prev_hash || canonical JSON of the entry), hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(event)).hexdigest()


def seal(event: AuditEvent, seq: int, prev_hash: str) -> str:
    """Number ``event`` after an entry whose hash is ``prev_hash``; returns its hash."""
    event.seq = seq
    event.prev_hash = prev_hash
    event.hash = entry_hash(prev_hash, event)
    return event.hash


@dataclass
class ChainHead:
    """Where a chain stands: its last entry, and the checkpoint left by pruning."""

    chain: str
    seq: int = 0
    hash: str = GENESIS
    pruned_seq: int = 0
    pruned_hash: str = GENESIS


@dataclass(frozen=True)
class Break:
    """One place a chain does not verify."""

    tenant_id: str | None
    seq: int
    entry_id: str | None
    problem: str

    def describe(self) -> str:
        where = f"tenant {self.tenant_id or '(platform)'}, sequence {self.seq}"
        if self.entry_id:
            where += f", entry {self.entry_id}"
        return f"{where}: {self.problem}"


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a, b)


def verify(head: ChainHead, entries: Iterable[AuditEvent]) -> tuple[int, list[Break]]:
    """Check ``entries`` (one chain's, in sequence order, after the checkpoint) against each
    other and the head. Returns how many entries were checked and every break found; after a
    break the walk resumes from the entry found, so one tampered row is reported once."""
    tenant = tenant_of(head.chain)
    breaks: list[Break] = []
    expected, prev = head.pruned_seq + 1, head.pruned_hash
    count = 0
    for e in entries:
        count += 1
        seq = e.seq if e.seq is not None else -1
        if seq != expected:
            if seq > expected:
                gone = (f"entry {expected} is missing" if seq == expected + 1
                        else f"entries {expected} to {seq - 1} are missing")
                breaks.append(Break(tenant, expected, e.id,
                                    f"{gone} (removed) before this entry (sequence {seq})"))
            else:
                breaks.append(Break(tenant, seq, e.id,
                                    f"out of order: expected sequence {expected}"))
        elif not _same(e.prev_hash, prev):
            breaks.append(Break(tenant, seq, e.id, "does not follow the previous entry "
                                "(entries reordered or one removed)"))
        elif not _same(e.hash, entry_hash(prev, e)):
            breaks.append(Break(tenant, seq, e.id, "edited: its content no longer matches "
                                "its hash"))
        prev = e.hash or ""
        expected = max(expected, seq) + 1 if seq >= 0 else expected + 1
    last = expected - 1
    if head.seq > last:
        breaks.append(Break(tenant, last + 1, None,
                            f"the chain's head is at sequence {head.seq}: entries {last + 1} "
                            f"to {head.seq} are missing (removed)"))
    elif head.seq < last:
        breaks.append(Break(tenant, head.seq + 1, None,
                            f"entries after the chain's head (sequence {head.seq}) were added "
                            "outside Keyplane"))
    elif not _same(prev, head.hash):
        breaks.append(Break(tenant, last, None,
                            "the last entry's hash does not match the chain's head"))
    return count, breaks
