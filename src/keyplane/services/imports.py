"""``keyplane import``: existing keys brought into a tenant so that the integrations built on them
keep working.

Every source (``services/import_sources.py``: djangorestframework-api-key's table, a CSV of
plaintext keys, another Keyplane's export) yields :class:`Candidate` rows; this module decides
each one and writes them in batches of :data:`BATCH` rows, all in ONE transaction: an import
that stops part way (an error, a lost connection, SIGKILL) leaves none of its keys, never some:

* a row already imported (same source id, same secret, same key id) is ``present``: running an
  import twice imports nothing the second time;
* a row that cannot be imported is ``refused`` with the reason, naming the field, and nothing of
  it is written; the other rows are still imported;
* ``dry_run`` decides every row the same way and writes nothing;
* if the database refuses a write (another import of the same keys committed meanwhile), the
  whole import is rolled back and answers 409: run it again, and the keys now present are
  skipped.

Imported keys keep their names, creation dates and expiry; their scopes come from the scope
map. Plaintext keys (CSV) are hashed with the current pepper at once and never stored, logged
or echoed. Keys in a foreign format keep it (no Keyplane checksum). A legacy digest is kept
until the key's first use upgrades it (``services/legacy.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, Protocol

from keyplane.core import ids, tokens
from keyplane.core import legacy as lg
from keyplane.core import scopes as sc
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, KeyplaneError, NotFound, ValidationError
from keyplane.core.legacy import ImportRecord
from keyplane.core.model import ApiKey, KeySecret, Principal
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import SYSTEM, principal_rights
from keyplane.services import validate as v
from keyplane.services.context import Context
from keyplane.services.import_rows import Candidate, ImportReport, Outcome, ScopeMap

__all__ = ["BATCH", "Candidate", "ImportReport", "ImportService", "Outcome", "ScopeMap"]

log = logging.getLogger("keyplane.imports")

BATCH = 500
FOREIGN_PREFIX = "ext"  # ApiKey.prefix of an imported key in a foreign format
SOURCES = ("drf-api-key", "csv", "keyplane")


class ImportRepo(Protocol):
    def present(self, source: str, refs: Iterable[str]) -> dict[str, tuple[str, str | None]]: ...
    def digests_present(self, digests: Iterable[str]) -> dict[str, str | None]: ...
    def keys_present(self, key_ids: Iterable[str]) -> dict[str, str | None]: ...
    def lookups_present(self, lookups: Iterable[str]) -> set[str]: ...
    def add_many(self, keys: list[ApiKey], secrets: list[KeySecret],
                 imports: list[ImportRecord]) -> None: ...


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImportService:
    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], ImportRepo]) -> None:
        self.ctx = ctx
        self.repos = repos

    def run(self, source: str, tenant_id: str, rows: Iterable[Candidate], *,
            scope_map: ScopeMap | None = None, owner: str | None = None,
            dry_run: bool = False,
            progress: Callable[[int], None] | None = None) -> ImportReport:
        """Imports ``rows`` into ``tenant_id``; ``owner`` (email or id) owns the keys whose row
        names no owner. Every row is decided and written in one transaction (read and written
        :data:`BATCH` rows at a time): all the imported keys become visible together, or none."""
        if source not in SOURCES:
            raise ValidationError(f"source must be one of {', '.join(SOURCES)}", field="source")
        scope_map = scope_map or ScopeMap()
        report = ImportReport(source, tenant_id, dry_run)
        with self.ctx.uow(readonly=True) as uow:
            tenant = uow.tenants.get(tenant_id)
            if tenant is None:
                raise NotFound(f"no tenant {tenant_id}", field="tenant")
            if owner is not None and self._owner(uow, tenant_id, owner, {}) is None:
                raise NotFound(f"--owner: no member or service account {owner!r} in "
                               f"{tenant_id}", field="owner")
        state = _State(tenant.policy.allow_non_expiring, tenant.policy.require_tls_default)
        with self.ctx.uow() as uow:
            written = 0
            for batch in _batches(iter(rows), BATCH):
                planned, outcomes = self._batch(uow, source, tenant_id, batch, scope_map, owner,
                                                dry_run, state)
                if planned and not dry_run:
                    self._write(uow, source, tenant_id, planned)
                    written += len(planned)
                report.outcomes += outcomes
                if progress is not None:
                    progress(len(batch))
            if written:
                # verifiers may meet foreign keys
                self.ctx.changed(uow, ChangeKind.IMPORT, tenant_id)
                self._commit(uow)
        log.info("import source=%s tenant=%s dry_run=%s imported=%d present=%d refused=%d",
                 source, tenant_id, dry_run, report.count("imported"), report.count("present"),
                 report.count("refused"))
        return report

    # -- one batch ---------------------------------------------------------------------------

    def _batch(self, uow: UnitOfWork, source: str, tenant_id: str, batch: list[Candidate],
               scope_map: ScopeMap, owner: str | None, dry_run: bool,
               state: _State) -> tuple[list[_Planned], list[Outcome]]:
        hasher = self.ctx.hasher
        for row in batch:  # the plaintext is hashed here and dropped
            if row.secret is not None:
                raw, row.secret = row.secret, None
                if row.refused is None:
                    self._classify(row, raw)
                if row.refused is None:
                    row.digest, row.pepper_id = hasher.digest(raw), hasher.current.id
                    row.source_ref = row.digest
        return self._plan(uow, source, tenant_id, batch, scope_map, owner, dry_run, state)

    def _commit(self, uow: UnitOfWork) -> None:
        try:
            uow.commit()
        except Exception as exc:
            conflict = _conflict(exc)
            if conflict is None:
                raise
            raise conflict from exc

    def _plan(self, uow: UnitOfWork, source: str, tenant_id: str, batch: list[Candidate],
              scope_map: ScopeMap, owner: str | None, dry_run: bool,
              state: _State) -> tuple[list[_Planned], list[Outcome]]:
        repo = self.repos(uow)
        ok = [r for r in batch if r.refused is None]
        by_ref = repo.present(source, [r.source_ref for r in ok])
        by_digest = repo.digests_present([r.digest for r in ok if r.digest])
        by_id = repo.keys_present([r.key_id for r in ok if r.key_id])
        lookups = repo.lookups_present(
            [lg.lookup(r.legacy_scheme, r.lookup_prefix) for r in ok
             if r.legacy_scheme and r.lookup_prefix])
        now = self.ctx.clock.now()
        planned: list[_Planned] = []
        outcomes: list[Outcome] = []
        for row in batch:
            try:
                if row.refused is not None:
                    raise _Refused(row.refused)
                found = _already(row, by_ref.get(row.source_ref),
                                 by_digest.get(row.digest, _NONE) if row.digest else _NONE,
                                 by_id.get(row.key_id, _NONE) if row.key_id else _NONE,
                                 tenant_id)
                if found is not None:
                    outcomes.append(Outcome(row.number, row.label, "present", found))
                    continue
                seen = state.seen.get((row.source_ref, row.key_id))
                if seen is not None:
                    raise _Refused(f"the same key as row {seen}")
                if row.legacy_scheme and row.lookup_prefix and lg.lookup(
                        row.legacy_scheme, row.lookup_prefix) in lookups:
                    raise _Refused("prefix: another imported key already has this prefix")
                plan = self._decide(uow, tenant_id, row, scope_map, owner, state, now)
            except _Refused as refused:
                outcomes.append(Outcome(row.number, row.label, "refused", refused.reason))
                continue
            state.seen[(row.source_ref, row.key_id)] = row.number
            planned.append(plan)
            outcomes.append(Outcome(row.number, row.label,
                                    "would_import" if dry_run else "imported",
                                    key_id=plan.key.id))
        return planned, outcomes

    def _decide(self, uow: UnitOfWork, tenant_id: str, row: Candidate, scope_map: ScopeMap,
                default_owner: str | None, state: _State, now: datetime) -> _Planned:
        try:
            name = v.text(row.name, "name", max_len=v.MAX_NAME)
            description = v.text(row.description, "description", max_len=v.MAX_DESCRIPTION,
                                 required=False)
            allowed_ips = v.ip_list(row.allowed_ips)
        except KeyplaneError as exc:
            raise _Refused(exc.message) from None
        who = row.owner or default_owner
        if who is None:
            raise _Refused("owner: the row names no owner (give --owner)")
        principal = self._owner(uow, tenant_id, who, state.owners)
        if principal is None:
            raise _Refused(f"owner: no member or service account {who!r} in {tenant_id}")
        if not principal.enabled:
            raise _Refused(f"owner: {who!r} is disabled")
        scopes = scope_map.scopes_for(row)
        if scopes is None:
            raise _Refused("scopes: the scope map gives this key no scopes (add a default)")
        catalogue = self.ctx.catalogue()
        try:
            scopes = v.scope_list(scopes, catalogue)
        except KeyplaneError as exc:
            raise _Refused(exc.message) from None
        platform = [s for s in scopes if s.startswith("platform:")]
        if platform:
            raise _Refused(f"scopes: {platform[0]!r} is for operator keys only")
        rights = state.rights.get(principal.id)
        if rights is None:
            rights = principal_rights(principal, uow.groups.get_many(principal.group_ids),
                                      catalogue)
            state.rights[principal.id] = rights
        beyond = sorted(sc.expand(scopes) - rights)
        if beyond:
            raise _Refused(f"scopes: the owner does not hold {beyond[0]!r}; a key cannot "
                           "exceed its owner's rights")
        if row.expires_at is None and not state.allow_non_expiring:
            raise _Refused("expires_at: the key never expires, which the tenant's policy does "
                           "not allow (allow_non_expiring)")
        if row.expires_at is not None and row.expires_at <= now:
            raise _Refused("expires_at: the key has already expired")
        created = row.created_at or now
        if created > now:
            raise _Refused("created_at: in the future")
        if row.pepper_id is not None and row.pepper_id not in self.ctx.hasher.pepper_ids:
            raise _Refused(f"pepper_id: the source's pepper {row.pepper_id[:40]!r} is not "
                           "configured here, so its digest cannot verify (add that pepper)")
        if row.key_id is not None and not _KEY_ID.fullmatch(row.key_id):
            raise _Refused("id: not a Keyplane key id")
        key_id = row.key_id or ids.new_id("key")
        assert row.digest is not None or row.legacy_digest is not None
        key = ApiKey(
            id=key_id, tenant_id=tenant_id, owner_id=principal.id, name=name,
            prefix=row.prefix or FOREIGN_PREFIX, start=row.start or "", scopes=scopes,
            created_at=created, updated_at=now, expires_at=row.expires_at, lifetime_days=None,
            description=description, created_by=SYSTEM.actor, allowed_ips=allowed_ips,
            require_tls=state.require_tls if row.require_tls is None else row.require_tls,
            enabled=row.enabled, ratelimit=row.ratelimit, meta=dict(row.meta),
        )
        secret = None
        if row.digest is not None:
            assert row.pepper_id is not None
            secret = KeySecret(id=ids.new_id("sec"), key_id=key_id, digest=row.digest,
                               pepper_id=row.pepper_id, start=key.start, created_at=created,
                               expires_at=None)
        return _Planned(row, key, secret)

    def _write(self, uow: UnitOfWork, source: str, tenant_id: str,
               planned: list[_Planned]) -> None:
        now = self.ctx.clock.now()
        records = [ImportRecord(
            key_id=p.key.id, source=source, source_ref=p.row.source_ref, foreign=p.row.foreign,
            imported_at=now, legacy_scheme=p.row.legacy_scheme if p.secret is None else None,
            legacy_lookup=(lg.lookup(p.row.legacy_scheme, p.row.lookup_prefix)
                           if p.row.legacy_scheme and p.row.lookup_prefix else None),
            legacy_digest=p.row.legacy_digest if p.secret is None else None,
        ) for p in planned]
        try:
            self.repos(uow).add_many([p.key for p in planned],
                                     [p.secret for p in planned if p.secret is not None],
                                     records)
        except Exception as exc:
            conflict = _conflict(exc)
            if conflict is None:
                raise
            raise conflict from exc
        # one entry per batch written (at most BATCH key ids each), all in the one transaction
        self.ctx.audit(uow, SYSTEM, "keys.imported", source, tenant_id=tenant_id,
                       source=source, count=len(planned), key_ids=[p.key.id for p in planned])

    def _owner(self, uow: UnitOfWork, tenant_id: str, who: str,
               cache: dict[str, Principal | None]) -> Principal | None:
        if who in cache:
            return cache[who]
        found = (uow.principals.get_by_email(tenant_id, who.strip().lower()) if "@" in who
                 else uow.principals.get(tenant_id, who))
        cache[who] = found
        return found

    def _classify(self, row: Candidate, raw: str) -> None:
        """Sets the format of a plaintext key (Keyplane's, or a foreign one kept as it is)."""
        parsed = tokens.parse(raw)
        if parsed is not None:
            row.prefix, row.start, row.foreign = parsed.prefix, parsed.start, False
            return
        if not lg.foreign_shape(raw):
            row.refused = f"key: not a Keyplane key, and a foreign key must be {lg.FOREIGN_RULE}"
            return
        # a foreign key shows its first 4 characters in lists (a Keyplane key shows 8 of 38)
        row.prefix, row.start, row.foreign = FOREIGN_PREFIX, raw[:4], True


def _conflict(exc: Exception) -> Conflict | None:
    """A unique key refused (the same keys imported by another run meanwhile) becomes a 409
    saying so; anything else (e.g. the database unreachable) is raised as it is."""
    if type(exc).__name__ != "IntegrityError":  # the driver's error, named without importing it
        return None
    log.warning("import refused by the database (%s); nothing was imported", type(exc).__name__)
    return Conflict("the database refused the import (is another import of the same keys "
                    "running?); nothing was imported: run it again, and the keys already "
                    "present are skipped", code="import_conflict")


_NONE: Any = object()
_KEY_ID = re.compile(r"key_[A-Za-z0-9]{1,36}")


def _already(row: Candidate, by_ref: tuple[str, str | None] | None, by_digest: Any,
             by_id: Any, tenant_id: str) -> str | None:
    """"already present" (in this tenant), or raises :class:`_Refused` (another tenant)."""
    for tenant in (by_ref[1] if by_ref else _NONE, by_digest, by_id):
        if tenant is _NONE:
            continue
        if tenant == tenant_id:
            return "already present"
        raise _Refused("this key already exists in another tenant")
    return None


@dataclass
class _State:
    """What one import run remembers across its batches."""

    allow_non_expiring: bool
    require_tls: bool
    owners: dict[str, Principal | None] = field(default_factory=dict)
    rights: dict[str, frozenset[str]] = field(default_factory=dict)
    seen: dict[tuple[str, str | None], int] = field(default_factory=dict)


@dataclass
class _Planned:
    row: Candidate
    key: ApiKey
    secret: KeySecret | None


def _batches(rows: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    while True:
        batch = list(islice(rows, size))
        if not batch:
            return
        yield batch
