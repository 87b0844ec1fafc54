"""Verification: is this credential valid for this request? The hot path.

parse + checksum (no storage touched for a malformed string) → keyed digest → cache or stored
record → policy checks → rate limit → usage recorded in memory.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from keyplane.cache.local import MISSING, VerificationCache
from keyplane.core import scopes as sc
from keyplane.core import tokens
from keyplane.core.decisions import Code, Decision, Denied
from keyplane.core.policy import Address, Network, Request, Snapshot, decide, parse_networks
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import principal_rights
from keyplane.services.context import Context
from keyplane.services.usage import UsageRecorder

log = logging.getLogger("keyplane.verify")

MALFORMED = Denied(Code.MALFORMED, "the key is not in Keyplane's format")
NOT_FOUND = Denied(Code.NOT_FOUND, "no such key")

Loader = Callable[[UnitOfWork, str], Snapshot | None]
# (denial or None, the "ratelimit" object of the answer): per-key rate limits and usage quotas,
# called for snapshots with a ratelimit or with meta["quota"] (cache/ratelimit.py)
RateCheck = Callable[[Snapshot], tuple[Denied | None, dict[str, int] | None]]


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    snapshot: Snapshot | None = None
    ratelimit: dict[str, int] | None = None

    @property
    def valid(self) -> bool:
        return self.decision.valid


class Verifier:
    def __init__(self, ctx: Context, cache: VerificationCache, usage: UsageRecorder) -> None:
        self.ctx = ctx
        self.cache = cache
        self.usage = usage
        self.loaders: dict[str, Loader] = {ctx.key_prefix: self._load_key}
        self.rate_check: RateCheck | None = None
        self.rate_check_blocking = False  # it may wait on the network: never on an event loop
        ctx.bus.subscribe(cache.invalidate)

    def register(self, prefix: str, loader: Loader) -> None:
        """Another credential type (e.g. OAuth access tokens) on the same verify path."""
        self.loaders[prefix] = loader

    def verify(self, raw: str, *, required: frozenset[str] = frozenset(),
               ip: Address | None = None, tls: bool | None = None) -> Verdict:
        verdict = self.verify_cached(raw, required=required, ip=ip, tls=tls, load=True)
        assert verdict is not None
        return verdict

    def verify_cached(self, raw: str, *, required: frozenset[str] = frozenset(),
                      ip: Address | None = None, tls: bool | None = None,
                      load: bool = False) -> Verdict | None:
        """Like :meth:`verify`, but ``None`` instead of a storage read on a cache miss (so an
        event loop can answer cache hits inline and send misses to a thread)."""
        parsed = tokens.parse(raw, self.loaders.keys())
        if parsed is None:
            return Verdict(MALFORMED)
        digest = self.ctx.hasher.digest(raw)
        snapshot = self.cache.get(digest)
        if snapshot is None:
            if not load:
                return None
            snapshot = self._fill(raw, digest, parsed.prefix)
        if snapshot is MISSING or not isinstance(snapshot, Snapshot):
            return Verdict(NOT_FOUND)
        now = self.ctx.clock.now()
        decision = decide(snapshot, Request(now=now, required=required, ip=ip, tls=tls))
        limits = None
        quota = snapshot.meta.get("quota")  # a usage quota is counted in the database
        if decision.valid and self.rate_check is not None and (
            snapshot.ratelimit is not None or quota
        ):
            if not load and (self.rate_check_blocking or quota):
                return None
            denial, limits = self.rate_check(snapshot)
            if denial is not None:
                decision = denial
        self.usage.record(snapshot.key_id, now, decision.code.value)
        return Verdict(decision, snapshot, limits)

    def _fill(self, raw: str, digest: str, prefix: str) -> Snapshot | type[MISSING]:
        generation = self.cache.generation
        loader = self.loaders[prefix]
        hasher = self.ctx.hasher
        with self.ctx.uow(readonly=True) as uow:
            snapshot = loader(uow, digest)
            if snapshot is None:  # made under an older pepper?
                for _pepper_id, old in hasher.candidates(raw)[1:]:
                    snapshot = loader(uow, old)
                    if snapshot is not None:
                        break
        if snapshot is None:
            self.cache.put_missing(digest, generation)
            return MISSING
        seconds_left = None
        if snapshot.expires_at is not None:
            seconds_left = (snapshot.expires_at - self.ctx.clock.now()).total_seconds()
        self.cache.put(digest, snapshot, generation, seconds_left)
        return snapshot

    def _load_key(self, uow: UnitOfWork, digest: str) -> Snapshot | None:
        secret = uow.keys.find_secret(digest)
        if secret is None or not hmac.compare_digest(secret.digest, digest):
            return None
        key = uow.keys.get_any(secret.key_id)
        if key is None:
            return None
        expires_at: datetime | None = key.expires_at
        if secret.expires_at is not None:
            expires_at = secret.expires_at if expires_at is None else min(
                expires_at, secret.expires_at)
        scopes = sc.expand(key.scopes)
        owner_enabled = True
        tenant_enabled = True
        tenant_networks: tuple[Network, ...] = ()
        if key.tenant_id is not None:
            tenant = uow.tenants.get(key.tenant_id)
            owner = uow.principals.get(key.tenant_id, key.owner_id) if key.owner_id else None
            if tenant is None:
                return None
            tenant_enabled = tenant.enabled
            tenant_networks = parse_networks(tenant.policy.allowed_ips)
            if owner is None:
                owner_enabled = False
                scopes = frozenset()
            else:
                rights = principal_rights(
                    owner, uow.groups.get_many(owner.group_ids), self.ctx.catalogue()
                )
                owner_enabled = owner.enabled
                scopes = scopes & rights
        return Snapshot(
            key_id=key.id, tenant_id=key.tenant_id, owner_id=key.owner_id, name=key.name,
            scopes=frozenset(scopes), expires_at=expires_at, revoked=key.revoked_at is not None,
            enabled=key.enabled, owner_enabled=owner_enabled, tenant_enabled=tenant_enabled,
            require_tls=key.require_tls, networks=parse_networks(key.allowed_ips),
            tenant_networks=tenant_networks,
            ratelimit=(key.ratelimit.limit, key.ratelimit.window_seconds) if key.ratelimit
            else None,
            meta={"quota": True} if key.remaining is not None else {},
        )
