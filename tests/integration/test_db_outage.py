"""PostgreSQL stopped (issue 14, "trust the failure behaviour"): management answers 503 with a
clear error, verification answers from its cache for KEYPLANE_DB_OUTAGE_GRACE_SECONDS and then
fails closed, a key revoked just before the outage is never accepted, and both recover without
a restart once the server is back. On a private cluster this test starts and stops itself
(tests/integration/pgcluster.py); the real server on a loopback port; the grace measured on
the code's clock."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa

from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.engine import unreachable
from tests.conftest import auth, make_tenant, serving
from tests.integration.pgcluster import BINDIR, PrivatePostgres, private_postgres
from tests.support import REQUIRE_SERVICES, SettableClock

pytestmark = pytest.mark.skipif(BINDIR is None and not REQUIRE_SERVICES,
                                reason="no PostgreSQL server binaries (initdb, pg_ctl)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


def verify(http: httpx2.Client, verifier: str, key: str) -> httpx2.Response:
    return http.post("/v1/verify", json={"key": key}, headers=auth(verifier))


def assert_clear_503(r: httpx2.Response, cluster: PrivatePostgres) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == "database_unavailable"
    assert "database" in error["message"]
    for leak in ("Traceback", "psycopg", "sqlalchemy", "postgresql://", str(cluster.port),
                 "127.0.0.1", "password"):
        assert leak not in r.text


def until(check: object, timeout: float = 30.0) -> None:
    """Polls ``check`` (a callable returning a truthy value) while the server reconnects."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "Keyplane did not recover"
        time.sleep(0.2)


def test_postgres_stopped_then_back(cluster: PrivatePostgres, tmp_path: Path) -> None:
    clock = SettableClock()
    with serving(cluster.url, None, tmp_path, clock=clock,
                 db_outage_grace_seconds=30) as (kp, http):
        tenant = make_tenant(kp)
        mk = auth(tenant.management_key)
        verifier = kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        body = {"name": "crm", "require_tls": False}
        cached = http.post("/v1/keys", json=body, headers=mk).json()
        revoked = http.post("/v1/keys", json=body, headers=mk).json()
        never_seen = http.post("/v1/keys", json=body, headers=mk).json()
        quota = http.post("/v1/keys", json={**body, "remaining": 100}, headers=mk).json()
        for key in (cached, revoked, quota):
            assert verify(http, verifier, key["key"]).json()["code"] == "VALID"
        # revoked just before the outage (its cached VALID is dropped at commit)
        assert http.delete(f"/v1/keys/{revoked['id']}", headers=mk).status_code == 204
        assert http.get("/v1/keys", headers=mk).status_code == 200

        cluster.stop()

        # management: 503, a clear JSON error, nothing of the connection in it
        assert_clear_503(http.get("/v1/keys", headers=mk), cluster)
        assert_clear_503(http.post("/v1/keys", json=body, headers=mk), cluster)
        assert_clear_503(http.post(f"/v1/keys/{cached['id']}/rotate", json={}, headers=mk),
                         cluster)
        assert kp.ctx.health is not None and kp.ctx.health.down
        # still ready (it verifies from its cache) until the grace ends
        r = http.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
        assert r.json()["database"] == "unreachable"

        # within the grace: the cached key still verifies; the revoked one never does; one
        # that was never cached cannot be answered (503, not a guess)
        clock.advance(seconds=29)
        r = verify(http, verifier, cached["key"])
        assert r.status_code == 200 and r.json()["code"] == "VALID", r.text
        r = verify(http, verifier, revoked["key"])
        assert r.status_code == 503 or r.json()["code"] == "REVOKED", r.text
        assert_clear_503(verify(http, verifier, never_seen["key"]), cluster)
        # a usage quota is counted in the database: it cannot be answered without it
        assert_clear_503(verify(http, verifier, quota["key"]), cluster)
        assert verify(http, verifier, "kp_" + "A" * 38).status_code in (200, 503)

        # past the grace: fail closed, even for the cached VALID (and the remembered answer)
        clock.advance(seconds=2)
        for _ in range(3):
            assert_clear_503(verify(http, verifier, cached["key"]), cluster)
        r = verify(http, verifier, revoked["key"])
        assert r.status_code == 503 or r.json()["code"] == "REVOKED", r.text
        r = http.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable", r.text

        cluster.start()

        # no restart: the pool's pre-ping reconnects, the next calls answer
        until(lambda: http.get("/v1/keys", headers=mk).status_code == 200)
        assert not kp.ctx.health.down
        assert http.get("/readyz").json()["status"] == "ok"
        assert verify(http, verifier, cached["key"]).json()["code"] == "VALID"
        assert verify(http, verifier, never_seen["key"]).json()["code"] == "VALID"
        assert verify(http, verifier, revoked["key"]).json()["code"] == "REVOKED"
        r = http.post(f"/v1/keys/{cached['id']}/rotate", json={"grace_period_seconds": 0},
                      headers=mk)
        assert r.status_code == 200, r.text
        assert verify(http, verifier, r.json()["key"]).json()["code"] == "VALID"
        assert verify(http, verifier, cached["key"]).json()["code"] != "VALID"


def test_a_grace_of_zero_fails_closed_at_once_and_recovers(
    cluster: PrivatePostgres, tmp_path: Path
) -> None:
    clock = SettableClock()
    with serving(cluster.url, None, tmp_path, clock=clock,
                 db_outage_grace_seconds=0) as (kp, http):
        tenant = make_tenant(kp, "Zero")
        verifier = kp.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        key = http.post("/v1/keys", json={"name": "crm", "require_tls": False},
                        headers=auth(tenant.management_key)).json()
        assert verify(http, verifier, key["key"]).json()["code"] == "VALID"
        cluster.stop()
        # the change poller notices within its period, or the first call does
        until(lambda: verify(http, verifier, key["key"]).status_code == 503, timeout=10)
        assert_clear_503(verify(http, verifier, key["key"]), cluster)
        cluster.start()
        until(lambda: verify(http, verifier, key["key"]).status_code == 200)
        assert verify(http, verifier, key["key"]).json()["code"] == "VALID"


class _DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("driver says so")
        self.sqlstate = sqlstate


def test_only_a_lost_or_refused_connection_counts_as_an_outage() -> None:
    def operational(state: str | None) -> sa.exc.DBAPIError:
        return sa.exc.OperationalError("SELECT 1", {}, _DriverError(state))

    assert unreachable(operational(None))  # connection refused: no SQLSTATE
    assert unreachable(operational("08006"))  # connection failure
    assert unreachable(operational("57P01"))  # admin shutdown
    assert not unreachable(operational("55P03"))  # lock not available: the database answered
    assert not unreachable(operational("57014"))  # statement timeout
    assert not unreachable(sa.exc.IntegrityError("INSERT", {}, _DriverError("23505")))
    assert not unreachable(sa.exc.OperationalError(
        "BEGIN", {}, sqlite3.OperationalError("database is locked")))
    assert not unreachable(ValueError("not a database error"))
