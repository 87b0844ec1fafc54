"""Per-scope usage behind the hygiene report's ``scopes_unused`` over real HTTP, on both
databases: each valid ``/v1/verify`` that names the scopes it needs is counted per key and
scope (the repeated answers of the fast path too), flushed with the usage recorder, and the
report lists the scopes a used key never needed in the window."""

from __future__ import annotations

from typing import Any

import httpx2
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from keyplane.storage.sql.imports import key_scope_usage
from tests.conftest import Tenant, auth
from tests.integration.helpers import code, create_key
from tests.integration.test_hygiene import operator
from tests.support import SettableClock


def entries(http: httpx2.Client, key: str, **params: Any) -> dict[str, dict[str, Any]]:
    r = http.get("/v1/reports/keys", params={"limit": 200, **params}, headers=auth(key))
    assert r.status_code == 200, r.text
    return {item["key"]["name"]: item for item in r.json()["items"]}


def counted(kp: Keyplane, key_id: str) -> dict[str, int]:
    kp.usage.flush()
    u = key_scope_usage.c
    with kp.engine.connect() as conn:
        rows = conn.execute(sa.select(u.scope, sa.func.sum(u.count)).where(
            u.key_id == key_id).group_by(u.scope))
        return {s: int(n) for s, n in rows}


def test_the_report_names_the_scopes_a_used_key_never_needed(
        keyplane: Keyplane, http: httpx2.Client, tenant: Tenant,
        clock: SettableClock) -> None:
    op = operator(keyplane)
    mk = tenant.management_key
    broad = create_key(http, mk, name="broad", expires_in_days=365,
                       scopes=["contacts:write", "calendars:read", "conversations:read"])
    quiet = create_key(http, mk, name="quiet", expires_in_days=365,
                       scopes=["contacts:write", "calendars:read"])
    for _ in range(5):  # the same question: answered again from the cache, still counted
        assert code(http, op, broad["key"], scopes=["contacts:read"]) == "VALID"
    assert code(http, op, broad["key"], scopes=["conversations:read"]) == "VALID"
    assert code(http, op, broad["key"], scopes=["calendars:write"]) == "INSUFFICIENT_SCOPE"
    assert code(http, op, quiet["key"]) == "VALID"  # names no scope: nothing to compare
    assert counted(keyplane, broad["id"]) == {"contacts:read": 5, "conversations:read": 1}
    assert counted(keyplane, quiet["id"]) == {}

    got = entries(http, op, tenant_id=tenant.id)
    assert got["broad"]["reasons"] == ["scopes_unused"]
    assert got["broad"]["unused_scopes"] == ["calendars:read"]  # contacts:write granted a read
    assert "quiet" not in got
    only = entries(http, op, tenant_id=tenant.id, reason="scopes_unused")
    assert set(only) == {"broad"}

    assert code(http, op, broad["key"], scopes=["calendars:read"]) == "VALID"
    keyplane.usage.flush()
    assert "broad" not in entries(http, op, tenant_id=tenant.id)

    # the window moves: uses older than unused_days no longer count
    clock.advance(days=3)
    assert code(http, op, broad["key"], scopes=["contacts:read"]) == "VALID"
    keyplane.usage.flush()
    got = entries(http, op, tenant_id=tenant.id, unused_days=2)
    assert got["broad"]["unused_scopes"] == ["calendars:read", "conversations:read"]
