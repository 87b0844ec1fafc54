"""The storage contract: one suite, run on SQLite and on the real PostgreSQL.

Every test takes the ``keyplane`` fixture (parametrized over both databases) or ``database``
(an empty database of either kind) and drives the repositories through the unit of work.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from keyplane.bootstrap import Keyplane
from keyplane.core import ids
from keyplane.core.changes import ChangeKind
from keyplane.core.model import (
    ApiKey,
    AuditEvent,
    Group,
    KeySecret,
    Principal,
    PrincipalKind,
    RateLimit,
    Role,
    Tenant,
    TenantPolicy,
)
from keyplane.core.ports import UnitOfWork
from keyplane.storage.sql import migrate
from keyplane.storage.sql import tables as t
from keyplane.storage.sql.changefeed import SqlChangeSource
from keyplane.storage.sql.engine import make_engine

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


def uow(kp: Keyplane, **kw: Any) -> UnitOfWork:
    return kp.ctx.uow(**kw)


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


def make_tenant(kp: Keyplane, **kw: Any) -> Tenant:
    tenant = Tenant(id=ids.new_id("loc"), name=kw.pop("name", "Acme"), created_at=T0, **kw)
    with uow(kp) as u:
        u.tenants.add(tenant)
        u.commit()
    return tenant


def make_principal(kp: Keyplane, tenant_id: str, **kw: Any) -> Principal:
    p = Principal(id=kw.pop("id", None) or ids.new_id("usr"), tenant_id=tenant_id,
                  kind=kw.pop("kind", PrincipalKind.MEMBER), name=kw.pop("name", "Ada"),
                  role=kw.pop("role", Role.ADMIN), created_at=kw.pop("created_at", T0), **kw)
    with uow(kp) as u:
        u.principals.add(p)
        u.commit()
    return p


def make_key(kp: Keyplane, tenant_id: str | None, owner_id: str | None, **kw: Any) -> ApiKey:
    key = ApiKey(
        id=kw.pop("id", None) or ids.new_id("key"), tenant_id=tenant_id, owner_id=owner_id,
        name=kw.pop("name", "k"), prefix="kp", start=kw.pop("start", "abcdEFGH"),
        scopes=kw.pop("scopes", ["contacts:read"]), created_at=T0, updated_at=T0,
        expires_at=kw.pop("expires_at", T0 + timedelta(days=90)),
        lifetime_days=kw.pop("lifetime_days", 90), **kw,
    )
    with uow(kp) as u:
        u.keys.add(key)
        u.commit()
    return key


def secret_for(key_id: str, digest: str, **kw: Any) -> KeySecret:
    return KeySecret(id=ids.new_id("sec"), key_id=key_id, digest=digest, pepper_id="p1",
                     start="abcdEFGH", created_at=kw.pop("created_at", T0),
                     expires_at=kw.pop("expires_at", None))


# -- round trips -----------------------------------------------------------------------------

def test_tenant_round_trips_every_field(keyplane: Keyplane) -> None:
    policy = TenantPolicy(default_expiry_days=30, max_expiry_days=None, allow_non_expiring=True,
                          allowed_ips=["10.0.0.0/8", "2001:db8::/32"], require_tls_default=False,
                          revoke_unused_after_days=45)
    tenant = Tenant(id=ids.new_id("loc"), name="Åcme ✓ 名前", enabled=False,
                    created_at=datetime(2031, 5, 6, 9, 8, 9, 654321, tzinfo=PLUS2), policy=policy)
    with uow(keyplane) as u:
        u.tenants.add(tenant)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        got = u.tenants.get(tenant.id)
    assert got == tenant
    assert got is not None
    assert_utc(got.created_at)
    assert got.created_at == datetime(2031, 5, 6, 7, 8, 9, 654321, tzinfo=UTC)

    got.name = "Renamed"
    got.enabled = True
    got.policy = TenantPolicy(max_expiry_days=10, default_expiry_days=5)
    with uow(keyplane) as u:
        u.tenants.update(got)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.tenants.get(tenant.id) == got
        assert u.tenants.get("loc_missing") is None


def test_principal_and_group_round_trip(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    g1 = Group(id=ids.new_id("grp"), tenant_id=tenant.id, name="sales",
               scopes=["contacts:read", "opportunities:write"], created_at=T0,
               description="Sales team ✓")
    g2 = Group(id=ids.new_id("grp"), tenant_id=tenant.id, name="support", scopes=[],
               created_at=T0)
    with uow(keyplane) as u:
        u.groups.add(g1)
        u.groups.add(g2)
        u.commit()
    p = Principal(id=ids.new_id("svc"), tenant_id=tenant.id, kind=PrincipalKind.SERVICE_ACCOUNT,
                  name="zapier bot", role=Role.READ_ONLY, created_at=T0, email=None,
                  password_hash=None, enabled=False, group_ids=sorted([g1.id, g2.id]))
    m = Principal(id=ids.new_id("usr"), tenant_id=tenant.id, kind=PrincipalKind.MEMBER,
                  name="Ada", role=Role.MEMBER, created_at=T0, email="ada@example.com",
                  password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA")
    with uow(keyplane) as u:
        u.principals.add(p)
        u.principals.add(m)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.principals.get(tenant.id, p.id) == p
        assert u.principals.get(tenant.id, m.id) == m
        assert u.principals.get_by_email(m.tenant_id, "ada@example.com") == m
        assert u.principals.get_by_email(m.tenant_id, "nobody@example.com") is None
        assert u.groups.get(tenant.id, g1.id) == g1
        assert u.groups.get_many([g2.id, g1.id, "grp_missing"]) == sorted(
            [g1, g2], key=lambda g: g.id)
        assert u.groups.get_many([]) == []
        assert u.groups.for_tenant(tenant.id) == [g1, g2]  # by name
        assert sorted(u.groups.member_ids(g1.id)) == [p.id]

    p.group_ids = [g2.id]
    p.role = Role.ADMIN
    p.enabled = True
    g1.scopes = ["payments:read"]
    with uow(keyplane) as u:
        u.principals.update(p)
        u.groups.update(g1)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.principals.get(tenant.id, p.id) == p
        assert u.groups.get(tenant.id, g1.id) == g1
        assert u.groups.member_ids(g1.id) == []


def test_principals_read_in_bulk_keep_their_groups_and_their_tenant(keyplane: Keyplane) -> None:
    tenant, other = make_tenant(keyplane), make_tenant(keyplane, name="Other")
    groups = [Group(id=ids.new_id("grp"), tenant_id=tenant.id, name=f"g{i}", scopes=[],
                    created_at=T0) for i in range(3)]
    people = [Principal(id=ids.new_id("svc"), tenant_id=tenant.id,
                        kind=PrincipalKind.SERVICE_ACCOUNT, name=f"bot {i}", role=Role.MEMBER,
                        created_at=T0, email=None, password_hash=None,
                        group_ids=sorted(g.id for g in groups[:i]))
              for i in range(4)]  # no group, one, two, three
    theirs = Principal(id=ids.new_id("svc"), tenant_id=other.id,
                       kind=PrincipalKind.SERVICE_ACCOUNT, name="theirs", role=Role.MEMBER,
                       created_at=T0, email=None, password_hash=None)
    with uow(keyplane) as u:
        for g in groups:
            u.groups.add(g)
        for p in [*people, theirs]:
            u.principals.add(p)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        found = u.principals.many(tenant.id, [p.id for p in people] + [theirs.id, "svc_none"])
        assert found == {p.id: p for p in people}  # another tenant's is left out
        assert u.principals.many(tenant.id, []) == {}
        page = u.principals.page(tenant.id, kind=None, limit=3, cursor=None)
        assert page.items == sorted(people, key=lambda p: p.id, reverse=True)[:3]
        rest = u.principals.page(tenant.id, kind=None, limit=3, cursor=page.next_cursor)
        assert rest.items == sorted(people, key=lambda p: p.id)[:1] and rest.next_cursor is None


def test_api_key_and_secret_round_trip_every_field(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    owner = make_principal(keyplane, tenant.id)
    key = ApiKey(
        id=ids.new_id("key"), tenant_id=tenant.id, owner_id=owner.id, name="zapier ✓",
        prefix="kp", start="AbCd1234", scopes=["calendars:read", "contacts:write"],
        created_at=datetime(2031, 5, 6, 9, 0, 0, 1, tzinfo=PLUS2), updated_at=T0,
        expires_at=T0 + timedelta(days=90, microseconds=5), lifetime_days=90,
        description="for the CRM sync", created_by="key:key_abc",
        last_used_at=T0 + timedelta(seconds=1), allowed_ips=["10.0.0.0/8", "2001:db8::/32"],
        require_tls=False, enabled=False, revoked_at=T0 + timedelta(hours=1),
        ratelimit=RateLimit(100, 60),
        meta={"team": "growth", "n": 3, "nested": {"list": [1, "two", None, True, 2.5]},
              "ü": "✓"},
    )
    operator = make_key(keyplane, None, None, scopes=["keys:verify"], expires_at=None,
                        lifetime_days=None)
    with uow(keyplane) as u:
        u.keys.add(key)
        u.keys.add_secret(secret_for(key.id, "d" * 64, expires_at=T0 + timedelta(days=7)))
        u.commit()
    with uow(keyplane, readonly=True) as u:
        got = u.keys.get(tenant.id, key.id)
        assert got == key
        assert u.keys.get_any(key.id) == key
        assert u.keys.get(None, operator.id) == operator
        secrets = u.keys.secrets(key.id)
    assert got is not None
    for value in (got.created_at, got.updated_at, got.expires_at, got.last_used_at,
                  got.revoked_at):
        assert_utc(value)
    assert got.meta["nested"]["list"] == [1, "two", None, True, 2.5]
    assert got.ratelimit == RateLimit(100, 60)
    assert len(secrets) == 1
    assert secrets[0].digest == "d" * 64
    assert secrets[0].expires_at == T0 + timedelta(days=7)
    assert_utc(secrets[0].expires_at)


def test_key_update_leaves_last_used_to_the_usage_recorder(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    key = make_key(keyplane, tenant.id, None)
    with uow(keyplane) as u:
        u.keys.touch({key.id: T0 + timedelta(minutes=5)})
        u.commit()
    key.name = "renamed"
    key.last_used_at = None  # a stale in-memory copy must not erase usage
    with uow(keyplane) as u:
        u.keys.update(key)
        u.keys.touch({key.id: T0 + timedelta(minutes=1)})  # older: ignored
        u.commit()
    with uow(keyplane, readonly=True) as u:
        got = u.keys.get(tenant.id, key.id)
    assert got is not None
    assert got.name == "renamed"
    assert got.last_used_at == T0 + timedelta(minutes=5)


def test_secrets_update_delete_and_find(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    key = make_key(keyplane, tenant.id, None)
    first, second = secret_for(key.id, "a" * 64), secret_for(key.id, "b" * 64)
    with uow(keyplane) as u:
        u.keys.add_secret(first)
        u.keys.add_secret(second)
        u.commit()
    first.expires_at = T0 + timedelta(hours=2)
    first.pepper_id = "p2"
    first.digest = "c" * 64
    with uow(keyplane) as u:
        u.keys.update_secret(first)
        u.keys.delete_secret(second.id)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.keys.secrets(key.id) == [first]
        assert u.keys.find_secret("c" * 64) == first
        assert u.keys.find_secret("a" * 64) is None
        assert u.keys.find_secret("b" * 64) is None


def test_secret_digests_are_unique(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    k1 = make_key(keyplane, tenant.id, None)
    k2 = make_key(keyplane, tenant.id, None)
    with uow(keyplane) as u:
        u.keys.add_secret(secret_for(k1.id, "e" * 64))
        u.commit()
    with pytest.raises(sa.exc.IntegrityError), uow(keyplane) as u:
        u.keys.add_secret(secret_for(k2.id, "e" * 64))
        u.commit()
    with uow(keyplane, readonly=True) as u:
        found = u.keys.find_secret("e" * 64)
        assert found is not None and found.key_id == k1.id
        assert u.keys.secrets(k2.id) == []


def test_audit_event_round_trip(keyplane: Keyplane) -> None:
    event = AuditEvent(id=ids.new_id("evt"), at=T0, tenant_id="loc_x", actor="key:key_1",
                       action="key.created", target="key_2", outcome="success",
                       ip="2001:db8::1", request_id="req-1",
                       details={"scopes": ["contacts:read"], "n": 1, "name": "✓"})
    with uow(keyplane) as u:
        u.audit.add(event)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        page = u.audit.page("loc_x", action=None, limit=10, cursor=None)
        assert page.items == [event]
        assert u.audit.page("loc_y", action=None, limit=10, cursor=None).items == []
        assert u.audit.page(None, action="key.created", limit=10, cursor=None).items == [event]
        assert u.audit.page("loc_x", action="key.revoked", limit=10, cursor=None).items == []
    assert_utc(page.items[0].at)


def test_naive_datetimes_are_refused(keyplane: Keyplane) -> None:
    tenant = Tenant(id=ids.new_id("loc"), name="x", created_at=datetime(2031, 1, 1))
    with pytest.raises(sa.exc.StatementError), uow(keyplane) as u:
        u.tenants.add(tenant)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.tenants.get(tenant.id) is None


# -- pagination and filters -----------------------------------------------------------------

def _ids_over_time(kind: str, n: int, start_ms: int = 1_900_000_000_000) -> list[str]:
    # one id per 97 ms, so that every base62 digit of the timestamp changes along the way
    return [ids.new_id(kind, now_ms=start_ms + 97 * i) for i in range(n)]


def _walk(fetch: Any, limit: int) -> Iterator[list[Any]]:
    cursor = None
    for _ in range(1000):
        page = fetch(limit, cursor)
        yield page.items
        cursor = page.next_cursor
        if cursor is None:
            return
    raise AssertionError("pagination did not end")


def test_key_pages_are_newest_first_without_gaps_or_duplicates(keyplane: Keyplane) -> None:
    make_key(keyplane, None, None)  # operator keys are not in any tenant's list
    for n in (0, 1, 20, 21, 23):
        tenant = make_tenant(keyplane)
        key_ids = _ids_over_time("key", n)
        for kid in reversed(key_ids):  # insertion order must not matter
            make_key(keyplane, tenant.id, None, id=kid)

        def fetch(limit: int, cursor: str | None, tid: str = tenant.id) -> Any:
            with uow(keyplane, readonly=True) as u:
                return u.keys.page(tid, owner_id=None, enabled=None, q=None, limit=limit,
                                   cursor=cursor)

        pages = list(_walk(fetch, 7))
        seen = [k.id for page in pages for k in page]
        assert seen == list(reversed(key_ids)), n
        assert all(len(p) == 7 for p in pages[:-1])
        assert len(pages) == max(1, -(-n // 7))  # no empty trailing page when n is a multiple


def test_every_repository_pages_newest_first(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    pids = _ids_over_time("usr", 12)
    for pid in pids:
        make_principal(keyplane, tenant.id, id=pid, kind=PrincipalKind.SERVICE_ACCOUNT)
    evt_ids = _ids_over_time("evt", 12)
    with uow(keyplane) as u:
        for eid in evt_ids:
            u.audit.add(AuditEvent(id=eid, at=T0, tenant_id=tenant.id, actor="system",
                                   action="x.y", target="t"))
        u.commit()

    def principals(limit: int, cursor: str | None) -> Any:
        with uow(keyplane, readonly=True) as u:
            return u.principals.page(tenant.id, kind="service_account", limit=limit,
                                     cursor=cursor)

    def audit(limit: int, cursor: str | None) -> Any:
        with uow(keyplane, readonly=True) as u:
            return u.audit.page(tenant.id, action="x.y", limit=limit, cursor=cursor)

    assert [p.id for page in _walk(principals, 5) for p in page] == list(reversed(pids))
    assert [e.id for page in _walk(audit, 5) for e in page] == list(reversed(evt_ids))
    with uow(keyplane, readonly=True) as u:
        assert u.principals.page(tenant.id, kind="member", limit=5, cursor=None).items == []


def test_tenant_pages(keyplane: Keyplane) -> None:
    tids = _ids_over_time("loc", 9, start_ms=2_100_000_000_000)  # newer than any real tenant
    with uow(keyplane) as u:
        for tid in tids:
            u.tenants.add(Tenant(id=tid, name=tid, created_at=T0))
        u.commit()

    def fetch(limit: int, cursor: str | None) -> Any:
        with uow(keyplane, readonly=True) as u:
            return u.tenants.page(limit=limit, cursor=cursor)

    seen = [x.id for page in _walk(fetch, 4) for x in page]
    assert seen == list(reversed(tids))


def test_newest_first_does_not_depend_on_the_database_collation(keyplane: Keyplane) -> None:
    """Production PostgreSQL databases often collate en_US: ids must still sort by time."""
    if keyplane.engine.dialect.name != "postgresql":
        pytest.skip("SQLite compares strings byte by byte")
    with keyplane.engine.begin() as conn:
        conn.exec_driver_sql('ALTER TABLE audit_events ALTER COLUMN id TYPE varchar(40) '
                             'COLLATE "en-x-icu"')
    evt_ids = _ids_over_time("evt", 80)
    with uow(keyplane) as u:
        for eid in evt_ids:
            u.audit.add(AuditEvent(id=eid, at=T0, tenant_id="loc_c", actor="system",
                                   action="x.y", target="t"))
        u.commit()

    def fetch(limit: int, cursor: str | None) -> Any:
        with uow(keyplane, readonly=True) as u:
            return u.audit.page("loc_c", action=None, limit=limit, cursor=cursor)

    assert [e.id for page in _walk(fetch, 9) for e in page] == list(reversed(evt_ids))


def test_key_list_filters(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    ada = make_principal(keyplane, tenant.id, email="ada@example.com")
    bob = make_principal(keyplane, tenant.id, email="bob@example.com")
    names = {"100% done": ada, "100 done": ada, "a_b": bob, "axb": bob, "Zapier Sync": ada}
    made = {name: make_key(keyplane, tenant.id, owner.id, name=name, start=f"st{i:06d}")
            for i, (name, owner) in enumerate(names.items())}
    locked = make_key(keyplane, tenant.id, bob.id, name="locked one", enabled=False)
    make_key(keyplane, tenant.id, bob.id, name="revoked one", revoked_at=T0)
    described = make_key(keyplane, tenant.id, None, name="plain", description="for ZAPIER")

    def names_for(**kw: Any) -> set[str]:
        args: dict[str, Any] = {"owner_id": None, "enabled": None, "q": None} | kw
        with uow(keyplane, readonly=True) as u:
            return {k.name for k in u.keys.page(tenant.id, limit=100, cursor=None, **args).items}

    assert names_for(owner_id=ada.id) == {"100% done", "100 done", "Zapier Sync"}
    assert names_for(owner_id=bob.id) == {"a_b", "axb", "locked one"}
    assert names_for(enabled=False) == {"locked one"}
    assert "locked one" not in names_for(enabled=True)
    assert names_for(q="%") == {"100% done"}
    assert names_for(q="_") == {"a_b"}
    assert names_for(q="0%") == {"100% done"}
    assert names_for(q="a_") == {"a_b"}
    assert names_for(q="\\") == set()
    assert names_for(q="zapier") == {"Zapier Sync", described.name}  # name or description
    assert names_for(q="st000003") == {"axb"}  # the displayed start
    assert names_for(q="revoked") == set()  # revoked keys are gone from lists
    assert names_for(owner_id=bob.id, enabled=True) == {"a_b", "axb"}
    assert locked.id not in {k for k in names_for(enabled=True)}
    assert len(made) == 5


def test_get_is_isolated_by_tenant(keyplane: Keyplane) -> None:
    a, b = make_tenant(keyplane), make_tenant(keyplane, name="B")
    owner = make_principal(keyplane, a.id)
    key = make_key(keyplane, a.id, owner.id)
    op_key = make_key(keyplane, None, None)
    group = Group(id=ids.new_id("grp"), tenant_id=a.id, name="g", scopes=[], created_at=T0)
    with uow(keyplane) as u:
        u.groups.add(group)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.keys.get(a.id, key.id) is not None
        assert u.keys.get(b.id, key.id) is None
        assert u.keys.get(None, key.id) is None  # the operator scope is not "any tenant"
        assert u.keys.get(a.id, op_key.id) is None
        assert u.keys.get(None, op_key.id) is not None
        assert u.principals.get(b.id, owner.id) is None
        assert u.groups.get(b.id, group.id) is None
        assert u.keys.page(b.id, owner_id=None, enabled=None, q=None, limit=10,
                           cursor=None).items == []
    with uow(keyplane) as u:  # deletes through another tenant touch nothing
        u.principals.delete(b.id, owner.id)
        u.groups.delete(b.id, group.id)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.principals.get(a.id, owner.id) is not None
        assert u.groups.get(a.id, group.id) is not None


# -- the unit of work ------------------------------------------------------------------------

class Boom(Exception):
    pass


def test_an_exception_rolls_everything_back(keyplane: Keyplane) -> None:
    tenant = Tenant(id=ids.new_id("loc"), name="half", created_at=T0)
    ran: list[str] = []
    with pytest.raises(Boom), uow(keyplane) as u:
        u.tenants.add(tenant)
        u.principals.add(Principal(id=ids.new_id("usr"), tenant_id=tenant.id,
                                   kind=PrincipalKind.MEMBER, name="x", role=Role.ADMIN,
                                   created_at=T0))
        u.changes.append("tenant", tenant.id)
        u.after_commit(lambda: ran.append("published"))
        raise Boom
    assert ran == []
    with uow(keyplane, readonly=True) as u:
        assert u.tenants.get(tenant.id) is None
        assert u.principals.page(tenant.id, kind=None, limit=5, cursor=None).items == []
    assert tenant.id not in [c.ref for c in SqlChangeSource(keyplane.engine).read(0, 1000)]


def test_leaving_without_commit_rolls_back(keyplane: Keyplane) -> None:
    tenant = Tenant(id=ids.new_id("loc"), name="uncommitted", created_at=T0)
    ran: list[str] = []
    with uow(keyplane) as u:
        u.tenants.add(tenant)
        u.after_commit(lambda: ran.append("x"))
    assert ran == []
    with uow(keyplane, readonly=True) as u:
        assert u.tenants.get(tenant.id) is None


def test_a_failed_statement_leaves_nothing_half_written(keyplane: Keyplane) -> None:
    a = make_tenant(keyplane)
    b = Tenant(id=ids.new_id("loc"), name="b", created_at=T0)
    with pytest.raises(sa.exc.IntegrityError), uow(keyplane) as u:
        u.tenants.add(b)
        u.tenants.add(Tenant(id=a.id, name="duplicate id", created_at=T0))
        u.commit()
    with uow(keyplane, readonly=True) as u:
        assert u.tenants.get(b.id) is None
        assert u.tenants.get(a.id) == a


def test_after_commit_callbacks_run_only_after_a_durable_commit(keyplane: Keyplane) -> None:
    tenant = Tenant(id=ids.new_id("loc"), name="ok", created_at=T0)
    seen: list[Tenant | None] = []

    def look() -> None:  # another transaction must already see the change
        with uow(keyplane, readonly=True) as other:
            seen.append(other.tenants.get(tenant.id))

    with uow(keyplane) as u:
        u.tenants.add(tenant)
        u.after_commit(look)
        assert seen == []
        u.commit()
        assert seen == [tenant]
    assert seen == [tenant]


def test_changes_log_is_ordered(keyplane: Keyplane) -> None:
    with uow(keyplane, readonly=True) as u:
        start = u.changes.head()
    with uow(keyplane) as u:
        u.changes.append("key", "key_1")
        u.changes.append("principal", "usr_1")
        u.commit()
    with uow(keyplane) as u:
        u.changes.append("tenant", "loc_1")
        u.commit()
    with uow(keyplane) as u:  # rolled back: never logged
        u.changes.append("key", "key_rolled_back")
    with uow(keyplane, readonly=True) as u:
        head = u.changes.head()
    source = SqlChangeSource(keyplane.engine)  # what the change feed reads the log with
    rows = source.read(start, 100)
    assert [(c.kind, c.ref) for c in rows] == [(ChangeKind.KEY, "key_1"),
                                               (ChangeKind.PRINCIPAL, "usr_1"),
                                               (ChangeKind.TENANT, "loc_1")]
    positions = [c.position for c in rows]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert positions[0] > start
    assert head == positions[-1] == source.head()
    assert source.read(start, 2) == rows[:2]
    assert source.read(positions[1], 100) == rows[2:]
    assert source.read(head, 100) == []


# -- schema ----------------------------------------------------------------------------------

def test_a_fresh_database_upgrades_to_head(database: tuple[str, str | None]) -> None:
    url, schema = database
    engine = make_engine(url, schema=schema, pool_size=2)
    try:
        assert migrate.current(engine) is None
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        assert migrate.head() is not None
        migrate.upgrade(engine)  # idempotent
        assert migrate.current(engine) == migrate.head()
        names = set(sa.inspect(engine).get_table_names())
        assert {tbl.name for tbl in t.metadata.sorted_tables} <= names
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        assert diff == [], "the migrations and tables.py disagree"
    finally:
        engine.dispose()


def test_deleting_a_tenant_cascades(keyplane: Keyplane) -> None:
    a, b = make_tenant(keyplane), make_tenant(keyplane, name="B")
    group = Group(id=ids.new_id("grp"), tenant_id=a.id, name="g", scopes=[], created_at=T0)
    with uow(keyplane) as u:
        u.groups.add(group)
        u.commit()
    owner = make_principal(keyplane, a.id, group_ids=[group.id])
    keeper = make_principal(keyplane, b.id)
    key = make_key(keyplane, a.id, owner.id)
    with uow(keyplane) as u:
        u.keys.add_secret(secret_for(key.id, "f" * 64))
        u.commit()
    with keyplane.engine.begin() as conn:
        conn.execute(t.tenants.delete().where(t.tenants.c.id == a.id))
    with keyplane.engine.connect() as conn:
        def count(table: sa.Table) -> int:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

        assert count(t.principals) == 1
        assert count(t.groups) == 0
        assert count(t.principal_groups) == 0
        assert count(t.api_keys) == 0
        assert count(t.key_secrets) == 0
    with uow(keyplane, readonly=True) as u:
        assert u.principals.get(b.id, keeper.id) == keeper


def test_deleting_an_owner_keeps_the_key_without_owner(keyplane: Keyplane) -> None:
    tenant = make_tenant(keyplane)
    owner = make_principal(keyplane, tenant.id)
    key = make_key(keyplane, tenant.id, owner.id)
    with uow(keyplane) as u:
        u.principals.delete(tenant.id, owner.id)
        u.commit()
    with uow(keyplane, readonly=True) as u:
        got = u.keys.get(tenant.id, key.id)
        assert got is not None and got.owner_id is None
        assert u.keys.ids_for_owner(owner.id) == []


def test_the_migration_history_has_a_single_head() -> None:
    # a new migration must follow the newest one, or `keyplane db upgrade` grows branches
    from keyplane.storage.sql import migrate

    head = migrate.head()
    assert head is not None and "," not in head, head


def test_pruning_the_change_log_keeps_the_newest_rows(keyplane: Keyplane) -> None:
    with keyplane.ctx.uow() as u:
        start = u.changes.head()
        for i in range(30):
            u.changes.append("key", f"key_{i}")
        u.commit()
    source = SqlChangeSource(keyplane.engine)
    head = source.head()
    assert source.prune(10) == head - 10
    remaining = source.read(0, 100)
    assert [c.position for c in remaining] == list(range(head - 9, head + 1))
    assert [c.ref for c in remaining][-1] == "key_29" and start < head
    assert source.head() == head and source.prune(10) == 0
