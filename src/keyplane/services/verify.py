"""Verification: is this credential valid for this request? The hot path.

parse + checksum (no storage touched for a malformed string) → cache (keyed by a SHA-256 of the
credential) or, on a miss, the keyed digest (HMAC with the pepper) and the stored record →
policy checks → rate limit → usage recorded in memory.

While the database is unreachable the cache answers for the configured grace only; a miss, or
anything after the grace, raises ``Unavailable`` (503) from storage: the verifier fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from ipaddress import IPv4Address
from typing import NamedTuple

from keyplane.core import legacy as lg
from keyplane.core import scopes as sc
from keyplane.core import tokens
from keyplane.core.decisions import Code, Decision, Denied
from keyplane.core.policy import (
    Address,
    Network,
    Request,
    Snapshot,
    decide,
    parse_networks,
    standing,
)
from keyplane.core.ports import MISSING, UnitOfWork, VerificationCache
from keyplane.core.rights import principal_rights, reaches_no_data
from keyplane.services.context import Context
from keyplane.services.legacy import LegacyKeys
from keyplane.services.usage import NO_SCOPES, Tally, UsageRecorder

log = logging.getLogger("keyplane.verify")

FOREIGN = "\x00foreign"  # what the loaders know an imported key in a foreign format by
MALFORMED = Denied(Code.MALFORMED, "the key is not in Keyplane's format")
NOT_FOUND = Denied(Code.NOT_FOUND, "no such key")

Loader = Callable[[UnitOfWork, str], Snapshot | None]
# (denial or None, the "ratelimit" object of the answer): per-key rate limits and usage quotas,
# called for snapshots with a ratelimit or with meta["quota"] (cache/ratelimit.py)
RateCheck = Callable[[Snapshot], tuple[Denied | None, dict[str, int] | None]]


_sha256 = hashlib.sha256


def cache_key(raw: str) -> bytes:
    """What the verification cache is keyed by: a SHA-256 of the credential. The keyed digest
    (HMAC with the pepper, which is what storage holds) is only needed on a miss; the secret
    itself is never kept."""
    return hashlib.sha256(raw.encode()).digest()


# Cached snapshots share what many keys have in common, so that a cached key costs well under
# 1 KiB: tenant and owner ids, scope sets, and the (never mutated) meta mappings.
_OUTCOMES = {code: code.value for code in Code}  # Enum.value is a slow property
NO_META: dict[str, object] = {}
QUOTA_META: dict[str, object] = {"quota": True}
_SCOPE_SETS: dict[frozenset[str], frozenset[str]] = {}


_IDS: dict[str, str] = {}


def shared(value: str | None) -> str | None:
    """One string object per distinct tenant or owner id among cached snapshots."""
    if value is None:
        return None
    found = _IDS.get(value)
    if found is None:
        if len(_IDS) >= 100_000:  # bounded; clearing only costs some sharing
            _IDS.clear()
        found = _IDS.setdefault(value, value)
    return found


def shared_scopes(scopes: frozenset[str]) -> frozenset[str]:
    found = _SCOPE_SETS.get(scopes)
    if found is None:
        if len(_SCOPE_SETS) >= 10_000:  # bounded: distinct scope sets are few in practice
            _SCOPE_SETS.clear()
        found = _SCOPE_SETS.setdefault(scopes, scopes)
    return found


class Verdict:
    """The answer to one verification: the decision, the key's snapshot when one was found, and
    its rate-limit state. Never changed once built (remembered verdicts are shared);
    ``valid`` is a slot, not a property: every caller reads it."""

    __slots__ = ("decision", "ratelimit", "snapshot", "valid")

    def __init__(self, decision: Decision, snapshot: Snapshot | None = None,
                 ratelimit: dict[str, int] | None = None) -> None:
        self.decision = decision
        self.snapshot = snapshot
        self.ratelimit = ratelimit
        self.valid: bool = decision.valid

    def __repr__(self) -> str:
        return f"Verdict({self.decision!r}, {self.snapshot!r}, {self.ratelimit!r})"


class Remembered(NamedTuple):
    """A verdict the verifier gave before, and what a repeat must still do (unpacked whole on
    the hot path: cheaper than three attribute reads)."""

    verdict: Verdict
    # given again while ``since <= clock.timestamp() < until``: from when it was decided until
    # the first of the key's expiry and the end of its snapshot's time in the cache (a clock
    # stepping back ends it too: it never outlives the snapshot's TTL by more than such a step)
    since: float
    until: float
    tally: Tally | None  # where a valid repeat is counted (usage.py)
    key_id: str
    outcome: str  # what usage counts
    scopes: frozenset[str]  # what a valid use needed: counted per scope
    reason: str | None  # a refusal's reason, remembered for the key's page


class Verifier:
    def __init__(self, ctx: Context, cache: VerificationCache, usage: UsageRecorder,
                 legacy: LegacyKeys | None = None, *,
                 loaders: Mapping[str, Loader] | None = None,
                 rate_check: RateCheck | None = None,
                 rate_check_blocking: bool = False) -> None:
        """``loaders``: other credential types on the same verify path, by prefix (e.g. OAuth
        access tokens); ``rate_check``: the key's rate limit and quota (``rate_check_blocking``:
        it may wait on the network, so never call it on an event loop)."""
        self.ctx = ctx
        self.cache = cache
        self.usage = usage
        self.loaders: dict[str, Loader] = {ctx.key_prefix: self._load_key, **(loaders or {})}
        # imported keys that keep a foreign format: looked up only while some exist (None:
        # not known yet; an import or a restore makes it unknown again)
        self.legacy = legacy
        self._foreign: bool | None = None if legacy is not None else False
        self.rate_check = rate_check
        self.rate_check_blocking = rate_check_blocking
        # /metrics: credential checks answered from the cache, and those that read storage
        self.cache_hits = 0
        self.cache_misses = 0
        # the hot path's steps, bound once
        self._timestamp = ctx.clock.timestamp
        self._health = ctx.health
        self._verdicts = cache.verdicts.table
        ctx.bus.subscribe(cache.invalidate)
        ctx.bus.subscribe(self._on_change)

    def _on_change(self, kind: str, _ref: str) -> None:
        if kind in ("import", "all") and self.legacy is not None:
            self._foreign = None

    def cache_trusted(self) -> bool:
        """Whether cached answers may be given: always while the database answers, and for
        ``KEYPLANE_DB_OUTAGE_GRACE_SECONDS`` after it stopped; then every verification reads
        storage, which answers 503 until the database is back (fail closed)."""
        health = self.ctx.health
        return health is None or health.down_since is None or health.cache_trusted()

    def verify(self, raw: str, *, required: frozenset[str] = frozenset(),
               ip: Address | None = None, tls: bool | None = None) -> Verdict:
        verdict = self.verify_cached(raw, required=required, ip=ip, tls=tls, load=True)
        assert verdict is not None
        return verdict

    def verify_cached(self, raw: str, *, required: frozenset[str] = frozenset(),
                      ip: Address | None = None, tls: bool | None = None,
                      load: bool = False) -> Verdict | None:
        """Like :meth:`verify`, but ``None`` instead of a storage read on a cache miss (so an
        event loop can answer cache hits inline and send misses to a thread).

        The same question again (credential, required scopes, address, TLS) is answered from
        the cache's ``verdicts`` without re-running the checks, until any change, until the
        cached snapshot expires, and never past the key's expiry; its use is still counted.
        Only strings that passed the checksum are ever remembered, so anything else is still
        refused by the checksum before a snapshot or storage is looked at."""
        key = _sha256(raw.encode()).digest()  # cache_key(raw): never the secret
        # an IPv4 address object hashes in Python (a microsecond): its int stands for it
        question = (key, required, ip._ip if type(ip) is IPv4Address else ip,  # type: ignore[attr-defined]
                    tls)
        health = self._health
        trusted = health is None or health.down_since is None or health.cache_trusted()
        if trusted:
            # the repeat of a question: written out (no call) since this is the whole work
            item = self._verdicts.get(question)
            if item is not None:
                verdict, since, until, tally, key_id, outcome, scopes, reason = item[1]
                at = self._timestamp()
                if since <= at < until:
                    # UsageRecorder.count_repeat, its common case written out (no call)
                    if tally is not None and tally.since <= at < tally.until:
                        next(tally.uses)
                        tally.last = at
                    else:
                        self.usage.count_repeat(tally, key_id, at, outcome, scopes, ip, reason)
                    self.cache_hits += 1
                    return verdict  # type: ignore[no-any-return]
        elif not load:
            return None  # the caller asks storage (from a thread), which may fail closed
        cache = self.cache
        generation = cache.generation  # before the snapshot is read
        prefix = tokens.prefix_of(raw, self.loaders)
        if prefix is None:  # Keyplane's format refused before storage; imported keys aside
            foreign = self._foreign
            if foreign is None:
                if not load:
                    return None
                foreign = self._known_foreign()
            if not foreign or not lg.foreign_shape(raw):
                return Verdict(MALFORMED)
            prefix = FOREIGN
        snapshot = cache.get(key) if trusted else None
        if snapshot is None:
            if not load:
                return None
            self.cache_misses += 1
            snapshot = self._fill(raw, key, prefix)
        else:
            self.cache_hits += 1
        if snapshot is MISSING or not isinstance(snapshot, Snapshot):
            return Verdict(NOT_FOUND)
        now = self.ctx.clock.now()
        decision = decide(snapshot, Request(now=now, required=required, ip=ip, tls=tls))
        limits = None
        counted = snapshot.counted
        if decision.valid and self.rate_check is not None and counted:
            # a usage quota is counted in the database: never on the event loop
            if not load and (self.rate_check_blocking or snapshot.meta.get("quota")):
                return None
            denial, limits = self.rate_check(snapshot)
            if denial is not None:
                decision = denial
        outcome = _OUTCOMES[decision.code]
        needed = required if required and decision.valid else NO_SCOPES
        reason = None if decision.valid else decision.reason
        at = now.timestamp()
        self.usage.record(snapshot.key_id, at, outcome, 1, needed, ip, reason)
        verdict = Verdict(decision, snapshot, limits)
        # a verdict that moves a counter is never repeated; nor past the key's expiry, nor once
        # its snapshot leaves the cache
        left = None if counted else cache.seconds_left(key)
        if left is not None and left > 0:
            expires_at = snapshot.expires_at
            until = at + left if expires_at is None else min(at + left, expires_at.timestamp())
            tally = Tally(snapshot.key_id, needed, ip) if reason is None else None
            if at < until and cache.remember(
                    cache.verdicts, question,
                    Remembered(verdict, at, until, tally, snapshot.key_id, outcome, needed,
                               reason),
                    generation, (key,)) and tally is not None:
                self.usage.adopt(tally)
        return verdict

    def identify(self, raw: str) -> Verdict:
        """Whose credential this is and whether it is live (not revoked, locked or expired),
        without counting a use or a rate limit: for reports about calls already verified."""
        prefix = tokens.prefix_of(raw, self.loaders)
        if prefix is None:
            return Verdict(MALFORMED)
        key = cache_key(raw)
        snapshot = self.cache.get(key)
        if snapshot is None:
            snapshot = self._fill(raw, key, prefix)
        if snapshot is MISSING or not isinstance(snapshot, Snapshot):
            return Verdict(NOT_FOUND)
        return Verdict(standing(snapshot, self.ctx.clock.now()), snapshot)

    def _known_foreign(self) -> bool:
        generation = self.cache.generation
        assert self.legacy is not None
        found = self.legacy.any_foreign()
        if self.cache.generation == generation:  # no import announced while reading
            self._foreign = found
        return found

    def _lookup(self, raw: str, loader: Loader) -> Snapshot | None:
        hasher = self.ctx.hasher
        with self.ctx.uow(readonly=True) as uow:
            snapshot = loader(uow, hasher.digest(raw))
            if snapshot is None:  # made under an older pepper?
                for _pepper_id, old in hasher.candidates(raw)[1:]:
                    snapshot = loader(uow, old)
                    if snapshot is not None:
                        break
        return snapshot

    def _fill(self, raw: str, key: bytes, prefix: str) -> Snapshot | type[MISSING]:
        generation = self.cache.generation
        loader = self.loaders.get(prefix, self._load_key)
        snapshot = self._lookup(raw, loader)
        if snapshot is None and prefix == FOREIGN and self.legacy is not None and (
                self.legacy.upgrade(raw)):  # a legacy digest matched: now stored as ours
            snapshot = self._lookup(raw, loader)
        if snapshot is None:
            self.cache.put_missing(key, generation)
            return MISSING
        seconds_left = None
        if snapshot.expires_at is not None:
            seconds_left = (snapshot.expires_at - self.ctx.clock.now()).total_seconds()
        self.cache.put(key, snapshot, generation, seconds_left)
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
        no_data = False
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
                    owner, uow.groups.get_many(owner.group_ids), self.ctx.catalogue(),
                    tenant.policy,
                )
                owner_enabled = owner.enabled
                # a key meant to reach data, whose owner may reach none: said so, whatever
                # is asked (a key of management scopes only keeps working)
                no_data = reaches_no_data(owner, tenant.policy) and bool(
                    scopes & self.ctx.catalogue().data_scopes())
                scopes = scopes & rights
        return Snapshot(
            key_id=key.id, tenant_id=shared(key.tenant_id), owner_id=shared(key.owner_id),
            name=key.name, scopes=shared_scopes(frozenset(scopes)), expires_at=expires_at,
            revoked=key.revoked_at is not None,
            enabled=key.enabled, owner_enabled=owner_enabled, tenant_enabled=tenant_enabled,
            require_tls=key.require_tls, networks=parse_networks(key.allowed_ips),
            tenant_networks=tenant_networks,
            ratelimit=(key.ratelimit.limit, key.ratelimit.window_seconds) if key.ratelimit
            else None,
            meta=QUOTA_META if key.remaining is not None else NO_META,
            owner_reaches_no_data=no_data,
        )
