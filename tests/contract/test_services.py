"""The key lifecycle use cases, through the services (no HTTP), on SQLite and PostgreSQL.

Verification goes through the real Verifier with its cache warm, so every "takes effect at once"
assertion also proves the cache was invalidated after the commit.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.core.decisions import Code
from keyplane.core.errors import Conflict, NotFound, PermissionDenied, ValidationError
from keyplane.core.model import ApiKey, AuditEvent, PrincipalKind
from keyplane.core.policy import parse_address
from keyplane.core.rights import SYSTEM, Caller
from keyplane.core.tokens import Hasher, Pepper
from keyplane.services.keys import IssuedKey
from keyplane.services.verification import Peer
from tests.conftest import data_writes
from tests.support import SettableClock

DAY = timedelta(days=1)


@dataclass
class Env:
    kp: Keyplane
    tid: str
    admin_id: str
    caller: Caller  # the tenant's management key, authenticated like a real request
    management_key: str

    def create(self, **body: Any) -> IssuedKey:
        body.setdefault("name", "integration")
        return self.kp.keys.create(self.caller, None, body)

    def key(self, key_id: str) -> ApiKey:
        return self.kp.keys.get(self.caller, None, key_id)

    def member(self, role: str = "member", **body: Any) -> str:
        """A service account; in a group reaching every data scope unless ``group_ids`` is
        given (an API user in no group holds no data scopes: api_users_need_group)."""
        if "group_ids" not in body:
            everything = next((g for g in self.kp.groups.list(self.caller, None)
                               if g.name == "everything"), None) or self.kp.groups.create(
                self.caller, None, {"name": "everything", "scopes": data_writes(self.kp)})
            body["group_ids"] = [everything.id]
        body = {"name": "worker", "role": role} | body
        return self.kp.principals.create(self.caller, None, PrincipalKind.SERVICE_ACCOUNT,
                                         body).id


def make_env(kp: Keyplane, name: str = "Acme") -> Env:
    """A tenant, its admin (no password: no argon2 cost) and a management key."""
    tenant = kp.tenants.create(SYSTEM, {"name": name})
    admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                 {"email": f"admin-{tenant.id[-8:].lower()}@example.com",
                                  "role": "admin"})
    issued = kp.keys.create(SYSTEM, tenant.id, {
        "name": "ops", "owner_id": admin.id,
        "scopes": ["keys:write", "members:write", "tenant:write", *data_writes(kp)]})
    caller = kp.verification.authenticate(issued.secret, Peer(None, True))
    return Env(kp, tenant.id, admin.id, caller, issued.secret)


@pytest.fixture
def env(keyplane: Keyplane) -> Env:
    return make_env(keyplane)


def code(kp: Keyplane, secret: str, *scopes: str, ip: str | None = None,
         tls: bool | None = True) -> Code:
    verdict = kp.verifier.verify(secret, required=frozenset(scopes),
                                 ip=parse_address(ip) if ip else None, tls=tls)
    return verdict.decision.code


def cached(kp: Keyplane, secret: str) -> bool:
    from keyplane.services.verify import cache_key  # the cache is keyed by SHA-256(secret)

    return kp.verifier.cache.hits.get(cache_key(secret), 0.0) is not None


def secret_rows(kp: Keyplane, key_id: str) -> int:
    with kp.ctx.uow(readonly=True) as uow:
        return len(uow.keys.secrets(key_id))


def audit_rows(kp: Keyplane, tid: str | None, action: str) -> list[AuditEvent]:
    with kp.ctx.uow(readonly=True) as uow:
        return uow.audit.page(tid, action=action, limit=1000, cursor=None).items


def dump_database(kp: Keyplane, only: set[str] | None = None) -> str:
    """Every row of every table (or of the tables in ``only``), as text."""
    md = sa.MetaData()
    md.reflect(bind=kp.engine)
    assert "api_keys" in md.tables and "key_secrets" in md.tables
    out = []
    with kp.engine.connect() as conn:
        for table in md.sorted_tables:
            if only is not None and table.name not in only:
                continue
            for row in conn.execute(sa.select(table)):
                out.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(out)


def raw_files(kp: Keyplane) -> bytes:
    """The SQLite database, its WAL and everything in the data directory."""
    out = b""
    url = sa.make_url(kp.settings.resolved_database_url)
    paths = list(Path(kp.settings.data_dir).rglob("*")) if kp.settings.data_dir.exists() else []
    if url.get_backend_name() == "sqlite" and url.database:
        db = Path(url.database)
        paths += [db, db.with_name(db.name + "-wal")]
    for path in paths:
        if path.is_file():
            out += path.read_bytes()
    return out


# -- secrets ---------------------------------------------------------------------------------

def test_the_secret_is_returned_once_and_only_its_digest_is_stored(env: Env) -> None:
    kp = env.kp
    issued = env.create(scopes=["contacts:read"], meta={"team": "growth"})
    secret = issued.secret
    assert tokens.parse(secret) is not None
    assert issued.key.start == secret[3:11]
    rotated = kp.keys.rotate(env.caller, None, issued.key.id, {})
    copy = kp.keys.duplicate(env.caller, None, issued.key.id, {"name": "copy"})
    secrets = [secret, rotated.secret, copy.secret, env.management_key]
    assert len(set(secrets)) == 4

    # nothing that reads a key back carries a secret
    shown = [kp.keys.get(env.caller, None, issued.key.id), rotated.key, copy.key,
             *kp.keys.list(env.caller, None).items]
    for s in secrets:
        for obj in shown:
            assert s not in repr(obj)
            assert s[3:-6] not in repr(obj)

    dump = dump_database(kp)
    assert kp.ctx.hasher.digest(secret) in dump  # the dump is real: the digest is there
    assert kp.ctx.hasher.digest(rotated.secret) in dump
    files = raw_files(kp)
    for s in secrets:
        body = s[3:-6]
        for needle in (s, body, body[8:], body[8:24]):  # the start (first 8) is public
            assert needle not in dump
            assert needle.encode() not in files
    for pepper_id in kp.ctx.hasher.pepper_ids:  # the pepper lives outside the database
        pepper = kp.ctx.hasher._by_id[pepper_id].secret
        assert pepper.hex() not in dump
        assert repr(pepper) not in dump


def test_secrets_never_appear_in_audit_details(env: Env) -> None:
    issued = env.create(scopes=["contacts:read"])
    rotated = env.kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 0})
    env.kp.keys.revoke(env.caller, None, issued.key.id)
    with env.kp.ctx.uow(readonly=True) as uow:
        events = uow.audit.page(env.tid, action=None, limit=1000, cursor=None).items
    text = repr(events)
    assert issued.key.id in text
    for s in (issued.secret, rotated.secret, env.management_key):
        assert s not in text and s[3:-6] not in text


def test_keys_made_under_an_old_pepper_verify_after_a_pepper_rotation(env: Env) -> None:
    kp = env.kp
    old_pepper = kp.ctx.hasher.current
    issued = env.create()
    kp.ctx.hasher = Hasher([Pepper("p-new", b"\x07" * 32), old_pepper])
    kp.verifier.cache.invalidate("all", "*")  # as a restart with the new peppers would
    assert code(kp, issued.secret) is Code.VALID  # found through the older pepper's digest
    fresh = env.create()
    with kp.ctx.uow(readonly=True) as uow:
        (row,) = uow.keys.secrets(fresh.key.id)
    assert row.pepper_id == "p-new"
    assert code(kp, fresh.secret) is Code.VALID
    kp.ctx.hasher = Hasher([Pepper("p-new", b"\x07" * 32)])  # the old pepper retired
    kp.verifier.cache.invalidate("all", "*")  # as a restart with the new peppers would
    assert code(kp, issued.secret) is Code.NOT_FOUND
    assert code(kp, fresh.secret) is Code.VALID


# -- rotation --------------------------------------------------------------------------------

def test_rotation_grace_both_secrets_work_until_the_deadline(env: Env,
                                                              clock: SettableClock) -> None:
    kp = env.kp
    issued = env.create(scopes=["contacts:read"])
    old = issued.secret
    assert code(kp, old) is Code.VALID
    start = clock.now()
    rotated = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 3600})
    new = rotated.secret
    assert rotated.key.id == issued.key.id
    assert rotated.key.previous_expires_at == start + timedelta(hours=1)
    assert env.key(issued.key.id).previous_expires_at == start + timedelta(hours=1)
    assert code(kp, old) is Code.VALID
    assert code(kp, new) is Code.VALID

    clock.advance(seconds=3599)
    assert code(kp, old) is Code.VALID
    assert code(kp, new) is Code.VALID
    clock.advance(seconds=1)
    assert code(kp, old) is Code.EXPIRED
    assert code(kp, new) is Code.VALID
    kp.verifier.cache.hits.clear()  # the stored record says the same as the cache
    assert code(kp, old) is Code.EXPIRED
    assert code(kp, new) is Code.VALID


def test_default_grace_is_seven_days(env: Env, clock: SettableClock) -> None:
    issued = env.create()
    rotated = env.kp.keys.rotate(env.caller, None, issued.key.id, {})
    assert rotated.key.previous_expires_at == clock.now() + timedelta(days=7)
    clock.advance(days=7, seconds=-1)
    assert code(env.kp, issued.secret) is Code.VALID
    clock.advance(seconds=1)
    assert code(env.kp, issued.secret) is Code.EXPIRED


def test_rotation_with_grace_zero_kills_the_old_secret_at_once(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    assert code(kp, issued.secret) is Code.VALID
    assert cached(kp, issued.secret)
    rotated = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 0})
    assert code(kp, issued.secret) is Code.NOT_FOUND
    assert code(kp, rotated.secret) is Code.VALID
    assert secret_rows(kp, issued.key.id) == 1
    assert rotated.key.previous_expires_at is None


def test_rotating_during_a_grace_keeps_at_most_two_secrets(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    r1 = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 3600})
    assert secret_rows(kp, issued.key.id) == 2
    r2 = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 3600})
    assert secret_rows(kp, issued.key.id) == 2
    assert code(kp, issued.secret) is Code.NOT_FOUND  # the earlier grace ended at once
    assert code(kp, r1.secret) is Code.VALID
    assert code(kp, r2.secret) is Code.VALID
    r3 = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 0})
    assert secret_rows(kp, issued.key.id) == 1
    assert [code(kp, s.secret) for s in (r1, r2, r3)] == [Code.NOT_FOUND, Code.NOT_FOUND,
                                                           Code.VALID]


def test_grace_never_outlives_the_keys_own_expiry(env: Env, clock: SettableClock) -> None:
    kp = env.kp
    start = clock.now()
    issued = env.create(expires_in_days=1)
    assert issued.key.expires_at == start + DAY
    clock.advance(hours=12)
    rotated = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 7 * 86400})
    assert rotated.key.previous_expires_at == start + DAY
    assert rotated.key.expires_at == clock.now() + DAY  # the new secret gets a full lifetime
    clock.set(start + DAY - timedelta(seconds=1))
    assert code(kp, issued.secret) is Code.VALID
    clock.set(start + DAY)
    assert code(kp, issued.secret) is Code.EXPIRED
    assert code(kp, rotated.secret) is Code.VALID


def test_rotation_keeps_scopes_ip_rules_and_meta(env: Env) -> None:
    kp = env.kp
    issued = env.create(name="crm", description="sync", scopes=["contacts:write"],
                        allowed_ips=["203.0.113.0/24", "2001:db8::/32"], require_tls=False,
                        meta={"team": "growth", "n": [1, 2]},
                        ratelimit={"limit": 100, "window_seconds": 60})
    before = env.key(issued.key.id)
    snap_before = kp.verifier.verify(issued.secret, ip=parse_address("203.0.113.9")).snapshot
    rotated = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 0})
    after = env.key(issued.key.id)
    for name in ("id", "name", "description", "scopes", "allowed_ips", "require_tls", "meta",
                 "ratelimit", "owner_id", "created_at", "created_by", "lifetime_days"):
        assert getattr(after, name) == getattr(before, name), name
    assert after.start == rotated.secret[3:11] != before.start
    new = rotated.secret
    assert code(kp, new, "contacts:read", "contacts:write", ip="203.0.113.9", tls=False) is (
        Code.VALID)
    assert code(kp, new, ip="2001:db8::1", tls=False) is Code.VALID
    assert code(kp, new, ip="198.51.100.1") is Code.IP_NOT_ALLOWED
    assert code(kp, new, "payments:read", ip="203.0.113.9") is Code.INSUFFICIENT_SCOPE
    snap_after = kp.verifier.verify(new, ip=parse_address("203.0.113.9")).snapshot
    assert snap_before is not None and snap_after is not None
    assert snap_after.scopes == snap_before.scopes
    assert snap_after.networks == snap_before.networks
    assert snap_after.ratelimit == (100, 60)


def test_bad_grace_periods_are_refused(env: Env) -> None:
    issued = env.create()
    for grace in (-1, 90 * 86400 + 1, "60", 1.5, True, None):
        with pytest.raises(ValidationError) as info:
            env.kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": grace})
        assert info.value.field == "grace_period_seconds"
    with pytest.raises(ValidationError) as info:
        env.kp.keys.rotate(env.caller, None, issued.key.id, {"grace": 0})
    assert info.value.field == "grace"
    assert secret_rows(env.kp, issued.key.id) == 1
    assert code(env.kp, issued.secret) is Code.VALID
    assert not audit_rows(env.kp, env.tid, "key.rotated")


def test_fifty_concurrent_rotations_leave_a_consistent_key(env: Env) -> None:
    """PostgreSQL serialises them with SELECT … FOR UPDATE, SQLite with BEGIN IMMEDIATE; a
    rotation that another one overtook while it waited is refused (409), so no caller walks
    away with a secret that a concurrent rotation already ended."""
    kp = env.kp
    issued = env.create()
    barrier = threading.Barrier(50)

    def rotate(_: int) -> str | None:
        barrier.wait()
        try:
            return kp.keys.rotate(env.caller, None, issued.key.id, {}).secret
        except Conflict as exc:
            assert exc.code == "concurrent_change"
            return None

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(rotate, range(50)))
    new_secrets = [s for s in answers if s is not None]
    assert new_secrets  # at least one wins; the rest were overtaken
    assert len(set(new_secrets)) == len(new_secrets)

    with kp.ctx.uow(readonly=True) as uow:
        rows = uow.keys.secrets(issued.key.id)
        key = uow.keys.get(env.tid, issued.key.id)
    assert key is not None
    assert len(rows) == 2  # the newest secret and the one it replaced (in its grace)
    current = [r for r in rows if r.expires_at is None]
    assert len(current) == 1
    assert key.start == current[0].start
    valid = [s for s in [issued.secret, *new_secrets] if code(kp, s) is Code.VALID]
    assert len(valid) == 2
    assert {kp.ctx.hasher.digest(s) for s in valid} == {r.digest for r in rows}
    newest = next(s for s in valid if kp.ctx.hasher.digest(s) == current[0].digest)
    assert newest[3:11] == key.start
    assert len([e for e in audit_rows(kp, env.tid, "key.rotated")
                if e.target == issued.key.id]) == len(new_secrets)


# -- duplicate, revoke, lock, edit -----------------------------------------------------------

def test_duplicate_copies_settings_with_a_new_secret(env: Env) -> None:
    kp = env.kp
    svc = env.member()
    issued = env.create(name="crm", description="sync", scopes=["contacts:write"],
                        owner_id=svc, allowed_ips=["203.0.113.0/24"], require_tls=False,
                        expires_in_days=30, meta={"team": "growth"},
                        ratelimit={"limit": 5, "window_seconds": 10})
    copy = kp.keys.duplicate(env.caller, None, issued.key.id, {"name": "crm 2"})
    src, dup = env.key(issued.key.id), env.key(copy.key.id)
    assert dup.id != src.id
    assert dup.name == "crm 2"
    assert copy.secret != issued.secret
    for name in ("description", "scopes", "allowed_ips", "require_tls", "meta", "ratelimit",
                 "owner_id", "lifetime_days"):
        assert getattr(dup, name) == getattr(src, name), name
    assert code(kp, copy.secret, "contacts:write", ip="203.0.113.1") is Code.VALID
    kp.keys.revoke(env.caller, None, issued.key.id)
    assert code(kp, issued.secret) is Code.REVOKED
    assert code(kp, copy.secret, ip="203.0.113.1") is Code.VALID
    default_name = kp.keys.duplicate(env.caller, None, copy.key.id, {})
    assert default_name.key.name == "crm 2 (copy)"


def test_revoke_is_immediate_despite_the_cache(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    assert code(kp, issued.secret) is Code.VALID
    assert code(kp, issued.secret) is Code.VALID
    assert cached(kp, issued.secret)
    kp.keys.revoke(env.caller, None, issued.key.id)
    assert code(kp, issued.secret) is Code.REVOKED
    with pytest.raises(NotFound):
        env.key(issued.key.id)
    assert issued.key.id not in [k.id for k in kp.keys.list(env.caller, None).items]
    with pytest.raises(NotFound):
        kp.keys.revoke(env.caller, None, issued.key.id)
    with pytest.raises(NotFound):
        kp.keys.rotate(env.caller, None, issued.key.id, {})
    assert code(kp, issued.secret) is Code.REVOKED


def test_lock_and_unlock(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    assert code(kp, issued.secret) is Code.VALID
    kp.keys.update(env.caller, None, issued.key.id, {"enabled": False})
    assert code(kp, issued.secret) is Code.DISABLED
    assert [k.id for k in kp.keys.list(env.caller, None, enabled=False).items] == [issued.key.id]
    kp.keys.update(env.caller, None, issued.key.id, {"enabled": True})
    assert code(kp, issued.secret) is Code.VALID
    actions = [e.action for e in audit_rows(kp, env.tid, "key.locked")
               + audit_rows(kp, env.tid, "key.unlocked") if e.target == issued.key.id]
    assert sorted(actions) == ["key.locked", "key.unlocked"]


def test_patching_scopes_takes_effect_on_the_next_verify(env: Env) -> None:
    kp = env.kp
    issued = env.create(scopes=["contacts:read"])
    assert code(kp, issued.secret, "contacts:read") is Code.VALID
    assert code(kp, issued.secret, "contacts:write") is Code.INSUFFICIENT_SCOPE
    kp.keys.update(env.caller, None, issued.key.id, {"scopes": ["contacts:write"]})
    assert code(kp, issued.secret, "contacts:write") is Code.VALID
    assert code(kp, issued.secret, "contacts:read") is Code.VALID  # write ⇒ read
    kp.keys.update(env.caller, None, issued.key.id, {"scopes": ["calendars:read"]})
    assert code(kp, issued.secret, "contacts:read") is Code.INSUFFICIENT_SCOPE
    assert code(kp, issued.secret, "calendars:read") is Code.VALID


def test_patching_ip_rules_and_tls_takes_effect_at_once(env: Env) -> None:
    kp = env.kp
    issued = env.create(require_tls=False)
    assert code(kp, issued.secret, ip="198.51.100.7", tls=False) is Code.VALID
    kp.keys.update(env.caller, None, issued.key.id, {"allowed_ips": ["203.0.113.0/24"]})
    assert code(kp, issued.secret, ip="198.51.100.7", tls=False) is Code.IP_NOT_ALLOWED
    assert code(kp, issued.secret, ip="::ffff:203.0.113.7", tls=False) is Code.VALID
    kp.keys.update(env.caller, None, issued.key.id, {"require_tls": True})
    assert code(kp, issued.secret, ip="203.0.113.7", tls=False) is Code.TLS_REQUIRED
    assert code(kp, issued.secret, ip="203.0.113.7", tls=None) is Code.TLS_REQUIRED
    assert code(kp, issued.secret, ip="203.0.113.7", tls=True) is Code.VALID


def test_a_failed_patch_changes_nothing(env: Env) -> None:
    kp = env.kp
    issued = env.create(name="before", scopes=["contacts:read"])
    with pytest.raises(ValidationError) as info:
        kp.keys.update(env.caller, None, issued.key.id,
                       {"name": "after", "allowed_ips": ["10.0.0.0/33"]})
    assert info.value.field == "allowed_ips"
    with pytest.raises(ValidationError):
        kp.keys.update(env.caller, None, issued.key.id, {"name": "after", "revoked_at": None})
    key = env.key(issued.key.id)
    assert key.name == "before"
    assert key.allowed_ips == []
    assert not audit_rows(kp, env.tid, "key.updated")


# -- owners and groups -----------------------------------------------------------------------

def test_demoting_the_owner_narrows_the_key_at_once(env: Env) -> None:
    kp = env.kp
    svc = env.member("member")
    issued = env.create(owner_id=svc, scopes=["contacts:write"])
    assert code(kp, issued.secret, "contacts:write") is Code.VALID
    kp.principals.update(env.caller, None, svc, {"role": "read_only"})
    assert code(kp, issued.secret, "contacts:write") is Code.INSUFFICIENT_SCOPE
    assert code(kp, issued.secret, "contacts:read") is Code.VALID
    kp.principals.update(env.caller, None, svc, {"role": "member"})
    assert code(kp, issued.secret, "contacts:write") is Code.VALID


def test_a_disabled_owner_disables_its_keys(env: Env) -> None:
    kp = env.kp
    svc = env.member()
    issued = env.create(owner_id=svc)
    assert code(kp, issued.secret) is Code.VALID
    kp.principals.update(env.caller, None, svc, {"enabled": False})
    assert code(kp, issued.secret) is Code.DISABLED
    with pytest.raises(ValidationError) as info:
        env.create(owner_id=svc)
    assert info.value.field == "owner_id"
    kp.principals.update(env.caller, None, svc, {"enabled": True})
    assert code(kp, issued.secret) is Code.VALID


def test_deleting_the_owner_revokes_its_keys(env: Env) -> None:
    kp = env.kp
    svc = env.member()
    keys = [env.create(owner_id=svc, name=f"k{i}") for i in range(3)]
    other = env.create()
    for k in keys:
        assert code(kp, k.secret) is Code.VALID
    kp.principals.delete(env.caller, None, svc)
    for k in keys:
        assert code(kp, k.secret) is Code.REVOKED
        with pytest.raises(NotFound):
            env.key(k.key.id)
    assert code(kp, other.secret) is Code.VALID
    (event,) = audit_rows(kp, env.tid, "service_account.deleted")
    assert sorted(event.details["revoked_keys"]) == sorted(k.key.id for k in keys)


def test_a_disabled_tenant_disables_its_keys(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    assert code(kp, issued.secret) is Code.VALID
    with pytest.raises(PermissionDenied):  # suspending a tenant is the operator's call
        kp.tenants.update(env.caller, env.tid, {"enabled": False})
    kp.tenants.update(SYSTEM, env.tid, {"enabled": False})
    assert code(kp, issued.secret) is Code.DISABLED
    kp.tenants.update(SYSTEM, env.tid, {"enabled": True})
    assert code(kp, issued.secret) is Code.VALID


def test_group_membership_narrows_data_scopes(env: Env) -> None:
    kp = env.kp
    svc = env.member("member")
    issued = env.create(owner_id=svc, scopes=["contacts:write", "calendars:read"])
    assert code(kp, issued.secret, "contacts:write", "calendars:read") is Code.VALID
    group = kp.groups.create(env.caller, None, {"name": "contacts only",
                                                "scopes": ["contacts:read"]})
    kp.principals.update(env.caller, None, svc, {"group_ids": [group.id]})
    assert code(kp, issued.secret, "contacts:read") is Code.VALID
    assert code(kp, issued.secret, "contacts:write") is Code.INSUFFICIENT_SCOPE
    assert code(kp, issued.secret, "calendars:read") is Code.INSUFFICIENT_SCOPE
    # a key cannot be created beyond what the groups allow
    with pytest.raises(ValidationError) as info:
        env.create(owner_id=svc, scopes=["calendars:read"])
    assert info.value.field == "scopes"
    # widening the group widens the key again, at once
    kp.groups.update(env.caller, None, group.id, {"scopes": ["contacts:write", "calendars:read"]})
    assert code(kp, issued.secret, "contacts:write", "calendars:read") is Code.VALID


def test_groups_with_members_cannot_be_deleted(env: Env) -> None:
    kp = env.kp
    group = kp.groups.create(env.caller, None, {"name": "g", "scopes": ["contacts:read"]})
    svc = env.member(group_ids=[group.id])
    with pytest.raises(Conflict):
        kp.groups.delete(env.caller, None, group.id)
    assert kp.groups.get(env.caller, None, group.id) == group
    kp.principals.update(env.caller, None, svc, {"group_ids": []})
    kp.groups.delete(env.caller, None, group.id)
    with pytest.raises(NotFound):
        kp.groups.get(env.caller, None, group.id)


def test_groups_hold_data_scopes_only(env: Env) -> None:
    with pytest.raises(ValidationError) as info:
        env.kp.groups.create(env.caller, None, {"name": "g", "scopes": ["keys:write"]})
    assert info.value.field == "scopes"


# -- tenant policy ---------------------------------------------------------------------------

def test_default_expiry_is_ninety_days(env: Env, clock: SettableClock) -> None:
    issued = env.create()
    assert issued.key.lifetime_days == 90
    assert issued.key.expires_at == clock.now() + 90 * DAY
    clock.advance(days=90, seconds=-1)
    assert code(env.kp, issued.secret) is Code.VALID
    clock.advance(seconds=1)
    assert code(env.kp, issued.secret) is Code.EXPIRED


def test_tenant_policy_sets_the_default_and_the_maximum(env: Env, clock: SettableClock) -> None:
    kp = env.kp
    with pytest.raises(ValidationError) as info:
        env.create(expires_in_days=366)
    assert info.value.field == "expires_in_days"
    assert env.create(expires_in_days=365).key.expires_at == clock.now() + 365 * DAY
    kp.tenants.update(env.caller, env.tid, {"policy": {"default_expiry_days": 30,
                                                    "max_expiry_days": 60}})
    assert env.create().key.expires_at == clock.now() + 30 * DAY
    assert env.create(expires_in_days=60).key.lifetime_days == 60
    for bad in (61, 0, -1, 1.5, "30", True):
        with pytest.raises(ValidationError) as info:
            env.create(expires_in_days=bad)
        assert info.value.field == "expires_in_days"
    with pytest.raises(ValidationError) as info:
        kp.tenants.update(env.caller, env.tid, {"policy": {"default_expiry_days": 90}})
    assert info.value.field == "policy.default_expiry_days"


def test_non_expiring_keys_only_where_the_policy_allows(env: Env, clock: SettableClock) -> None:
    kp = env.kp
    before = len(kp.keys.list(env.caller, None).items)
    with pytest.raises(ValidationError) as info:
        env.create(expires_in_days=None)
    assert info.value.field == "expires_in_days"
    assert len(kp.keys.list(env.caller, None).items) == before  # nothing half-written
    kp.tenants.update(env.caller, env.tid, {"policy": {"allow_non_expiring": True}})
    issued = env.create(expires_in_days=None)
    assert issued.key.expires_at is None and issued.key.lifetime_days is None
    clock.advance(days=3650)
    assert code(kp, issued.secret) is Code.VALID
    rotated = kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 60})
    assert rotated.key.expires_at is None
    assert rotated.key.previous_expires_at == clock.now() + timedelta(seconds=60)


def test_the_tenant_ip_allowlist_applies_to_every_key(env: Env) -> None:
    kp = env.kp
    plain = env.create()
    narrow = env.create(allowed_ips=["10.1.0.0/16"])
    assert code(kp, plain.secret, ip="192.0.2.1") is Code.VALID
    kp.tenants.update(env.caller, env.tid, {"policy": {"allowed_ips": ["10.0.0.0/8",
                                                                    "2001:db8::/32"]}})
    assert code(kp, plain.secret, ip="192.0.2.1") is Code.IP_NOT_ALLOWED
    assert code(kp, plain.secret) is Code.IP_NOT_ALLOWED  # an unknown address is refused
    assert code(kp, plain.secret, ip="10.200.0.1") is Code.VALID
    assert code(kp, plain.secret, ip="::ffff:10.200.0.1") is Code.VALID
    assert code(kp, plain.secret, ip="2001:db8::5") is Code.VALID
    assert code(kp, narrow.secret, ip="10.200.0.1") is Code.IP_NOT_ALLOWED  # both lists apply
    assert code(kp, narrow.secret, ip="10.1.0.1") is Code.VALID
    kp.tenants.update(env.caller, env.tid, {"policy": {"allowed_ips": []}})
    assert code(kp, plain.secret, ip="192.0.2.1") is Code.VALID


def test_tls_default_follows_the_tenant_policy(env: Env) -> None:
    assert env.create().key.require_tls is True
    env.kp.tenants.update(env.caller, env.tid, {"policy": {"require_tls_default": False}})
    assert env.create().key.require_tls is False
    assert env.create(require_tls=True).key.require_tls is True


# -- catalogue and rights --------------------------------------------------------------------

def test_unknown_scopes_are_refused(env: Env) -> None:
    for scopes in (["contacts:delete"], ["invoices:read"], ["contacts:read", "nope:x"]):
        with pytest.raises(ValidationError) as info:
            env.create(scopes=scopes)
        assert info.value.field == "scopes"
        assert scopes[-1] in info.value.message
    issued = env.create(scopes=["contacts:read"])
    with pytest.raises(ValidationError):
        env.kp.keys.update(env.caller, None, issued.key.id, {"scopes": ["contacts:delete"]})
    assert env.key(issued.key.id).scopes == ["contacts:read"]


def test_removing_a_scope_from_the_catalogue_removes_it_from_keys(env: Env) -> None:
    kp = env.kp
    kp.catalogue.put(SYSTEM, "invoices:read", {"description": "View invoices"})
    # the tenant's management key predates the scope, so it cannot grant it: the operator does
    issued = kp.keys.create(SYSTEM, env.tid, {"name": "books", "owner_id": env.admin_id,
                                              "scopes": ["invoices:read", "contacts:read"]})
    assert code(kp, issued.secret, "invoices:read", "contacts:read") is Code.VALID
    kp.catalogue.delete(SYSTEM, "invoices:read")
    assert code(kp, issued.secret, "invoices:read") is Code.INSUFFICIENT_SCOPE
    assert code(kp, issued.secret, "contacts:read") is Code.VALID
    with pytest.raises(ValidationError):
        env.create(scopes=["invoices:read"])
    kp.catalogue.put(SYSTEM, "invoices:read", {"description": "View invoices"})
    assert code(kp, issued.secret, "invoices:read") is Code.VALID


def test_management_scopes_cannot_be_removed_from_the_catalogue(env: Env) -> None:
    with pytest.raises(Conflict):
        env.kp.catalogue.delete(SYSTEM, "keys:write")
    with pytest.raises(ValidationError) as info:
        env.kp.catalogue.put(SYSTEM, "Bad Scope", {"description": "x"})
    assert info.value.field == "name"
    with pytest.raises(PermissionDenied):
        env.kp.catalogue.put(env.caller, "invoices:read", {"description": "x"})


def test_key_scopes_cannot_exceed_the_owners_rights(env: Env) -> None:
    kp = env.kp
    reader = env.member("read_only")
    member = env.member("member")
    cases = [(reader, ["contacts:write"]), (member, ["keys:write"]),
             (member, ["members:write"])]
    for owner, scopes in cases:
        with pytest.raises(ValidationError) as info:
            env.create(owner_id=owner, scopes=scopes)
        assert info.value.field == "scopes", scopes
    for scopes in (["platform:read"], ["contacts:write", "platform:write"]):
        with pytest.raises(ValidationError) as info:  # even the operator cannot do this
            kp.keys.create(SYSTEM, env.tid, {"name": "x", "owner_id": env.admin_id,
                                             "scopes": scopes})
        assert info.value.field == "scopes"
    assert env.create(owner_id=reader, scopes=["contacts:read", "keys:read"]).key.scopes == [
        "contacts:read", "keys:read"]
    issued = env.create(owner_id=member, scopes=["contacts:read"])
    with pytest.raises(ValidationError):
        kp.keys.update(env.caller, None, issued.key.id, {"scopes": ["tenant:write"]})


def test_a_failed_create_writes_nothing(env: Env) -> None:
    kp = env.kp
    reader = env.member("read_only")
    written_by_create = {"api_keys", "key_secrets", "audit_events", "changes", "principals",
                         "tenants"}
    kp.usage.flush()  # the management key's last use is written on the usage timer
    before = dump_database(kp, written_by_create)
    for body in ({"owner_id": reader, "scopes": ["contacts:write"]},
                 {"owner_id": 42},
                 {"scopes": ["contacts:read"], "meta": {"x": float("nan")}},
                 {"name": "x" * 201}, {"name": "ok", "colour": "red"}):
        with pytest.raises(ValidationError):
            env.create(**body)
    with pytest.raises(NotFound):  # an owner that does not exist, like an id in the path
        env.create(owner_id="usr_nobody")
    assert dump_database(kp, written_by_create) == before


def test_keys_of_another_tenant_do_not_exist(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    caller = make_env(kp, "Other").caller
    for call in (lambda: kp.keys.get(caller, None, issued.key.id),
                 lambda: kp.keys.rotate(caller, None, issued.key.id, {}),
                 lambda: kp.keys.update(caller, None, issued.key.id, {"name": "x"}),
                 lambda: kp.keys.duplicate(caller, None, issued.key.id, {}),
                 lambda: kp.keys.revoke(caller, None, issued.key.id),
                 lambda: kp.keys.get(caller, env.tid, issued.key.id)):
        with pytest.raises(NotFound):
            call()
    assert issued.key.id not in [k.id for k in kp.keys.list(caller, None).items]
    assert code(kp, issued.secret) is Code.VALID


def test_operator_keys_have_no_owner_and_only_platform_scopes(env: Env) -> None:
    kp = env.kp
    op = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"]}, operator=True)
    assert op.key.tenant_id is None and op.key.owner_id is None
    assert op.key.expires_at is None
    for body in ({"name": "x", "scopes": ["contacts:read"]},
                 {"name": "x", "owner_id": env.admin_id}):
        with pytest.raises(ValidationError):
            kp.keys.create(SYSTEM, None, body, operator=True)
    with pytest.raises(PermissionDenied):
        kp.keys.create(env.caller, None, {"name": "x"}, operator=True)


# -- audit and usage -------------------------------------------------------------------------

def test_create_rotate_revoke_each_write_one_audit_row(env: Env) -> None:
    kp = env.kp
    issued = env.create()
    kp.keys.rotate(env.caller, None, issued.key.id, {"grace_period_seconds": 0})
    kp.keys.revoke(env.caller, None, issued.key.id)
    for action in ("key.created", "key.rotated", "key.revoked"):
        rows = [e for e in audit_rows(kp, env.tid, action) if e.target == issued.key.id]
        assert len(rows) == 1, action
        (row,) = rows
        assert row.actor == f"key:{env.caller.key_id}"
        assert row.tenant_id == env.tid
        assert row.outcome == "success"
        assert row.at.utcoffset() == timedelta(0)
    assert audit_rows(kp, env.tid, "key.rotated")[0].details["grace_period_seconds"] == 0


def test_verification_records_last_used(env: Env, clock: SettableClock) -> None:
    kp = env.kp
    issued = env.create()
    assert env.key(issued.key.id).last_used_at is None
    clock.advance(minutes=5)
    used_at: datetime = clock.now()
    assert code(kp, issued.secret) is Code.VALID
    kp.usage.flush()
    assert env.key(issued.key.id).last_used_at == used_at
    clock.advance(minutes=5)
    assert code(kp, issued.secret, "payments:write") is Code.INSUFFICIENT_SCOPE  # not a use
    kp.usage.flush()
    assert env.key(issued.key.id).last_used_at == used_at
