"""The audit log that proves itself, on SQLite and PostgreSQL: what every entry records (actor,
credential, before/after, time, IP, user agent) through the API, the console, the CLI and
OAuth (RFC 7009 revocation by a real OAuth client); the per-tenant hash chain that
``keyplane audit verify`` checks after an edited, deleted or swapped row; filters and the
cursor of ``GET /v1/audit-events``; ``keyplane audit export``; retention with a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
import sqlalchemy as sa
from authlib.integrations.httpx_client import OAuth2Client

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth
from tests.integration.console_support import form_token
from tests.integration.oauth_support import (
    Partner,
    approved_app,
    csrf,
    exchange,
    get_code,
    sign_in,
)
from tests.support import RunningServer, SettableClock

KEYPLANE = Path(sys.executable).with_name("keyplane")
AGENT = "acme-sync/2.1 (+https://acme.example)"


@dataclass
class Cli:
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KEYPLANE), *args], capture_output=True, text=True,
                              timeout=120, env=self.env, check=False)


@pytest.fixture
def cli(database: tuple[str, str | None], tmp_path: Path) -> Cli:
    """The ``keyplane`` command on the test's database (the same one ``keyplane`` uses)."""
    url, schema = database
    if schema is not None:
        url = f"{url}?options={quote(f'-csearch_path={schema}')}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env.update(KEYPLANE_DATA_DIR=str(tmp_path / "cli-data"), KEYPLANE_DATABASE_URL=url,
               COLUMNS="200", NO_COLOR="1", USER="auditor", LOGNAME="auditor")
    env.pop("FORCE_COLOR", None)
    return Cli(env)


def entries(http: httpx2.Client, key: str, **params: Any) -> dict[str, Any]:
    r = http.get("/v1/audit-events", params=params, headers=auth(key))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def one(http: httpx2.Client, key: str, **params: Any) -> dict[str, Any]:
    items = entries(http, key, **params)["items"]
    assert len(items) == 1, items
    item: dict[str, Any] = items[0]
    return item


# -- what an entry records, by every path ------------------------------------------------------

def test_api_change_records_actor_credential_before_after_ip_and_agent(
        http: httpx2.Client, tenant: Tenant) -> None:
    headers = {**auth(tenant.management_key), "User-Agent": AGENT}
    r = http.post("/v1/keys", json={"name": "crm", "scopes": ["keys:read"]}, headers=headers)
    assert r.status_code == 201, r.text
    created = r.json()
    r = http.patch(f"/v1/keys/{created['id']}", json={"name": "crm sync", "meta": {"a": 1}},
                   headers=headers)
    assert r.status_code == 200, r.text
    me = http.get("/v1/keys", headers=auth(tenant.management_key)).json()["items"]
    ops_id = next(k["id"] for k in me if k["name"] == "ops")

    e = one(http, tenant.management_key, action="key.updated", target=created["id"])
    assert e["actor"] == f"key:{ops_id}" and e["credential"] == f"key:{ops_id}"
    assert e["ip"] == "127.0.0.1" and e["user_agent"] == AGENT
    assert e["changes"]["before"]["name"] == "crm" and e["changes"]["after"]["name"] == "crm sync"
    assert e["changes"]["before"]["meta"] == {} and e["changes"]["after"]["meta"] == {"a": 1}
    assert "scopes" not in e["changes"]["after"]  # only what changed
    assert e["at"] and e["seq"] >= 1 and len(e["hash"]) == 64 and len(e["prev_hash"]) == 64
    made = one(http, tenant.management_key, action="key.created", target=created["id"])
    assert made["changes"]["after"]["name"] == "crm" and "before" not in made["changes"]
    assert made["seq"] < e["seq"]
    # the secret is nowhere in the log
    assert created["key"] not in json.dumps(entries(http, tenant.management_key))

    r = http.delete(f"/v1/keys/{created['id']}", headers=headers)
    assert r.status_code == 204
    gone = one(http, tenant.management_key, action="key.revoked", target=created["id"])
    assert gone["changes"]["before"]["enabled"] is True
    assert gone["changes"]["after"]["enabled"] is False


def test_console_and_signin_record_the_session(server: RunningServer, tenant: Tenant,
                                               http: httpx2.Client) -> None:
    with httpx2.Client(base_url=server.url, timeout=10, headers={"User-Agent": AGENT}) as b:
        assert sign_in(b, tenant.admin_email, tenant.admin_password).status_code == 303
        token = form_token(b, "/keys/new")
        r = b.post("/keys", data={"csrf_token": token, "name": "Console key",
                                  "expires_in_days": "9", "require_tls": "on"})
        assert r.status_code == 200, r.text
        page = b.get("/audit")
        assert page.status_code == 200 and AGENT[:20] in page.text  # the console shows it
        r = b.post("/signout", data={"csrf_token": csrf(page.text)})
        assert r.status_code == 303
    signed_in = one(http, tenant.management_key, action="session.signed_in")
    assert signed_in["actor"] == f"principal:{tenant.admin_id}"
    assert signed_in["credential"] == "password" and signed_in["user_agent"] == AGENT
    out = one(http, tenant.management_key, action="session.signed_out")
    assert out["credential"] == f"session:{signed_in['target']}"
    assert out["user_agent"] == AGENT and out["ip"] == "127.0.0.1"
    made = [e for e in entries(http, tenant.management_key, action="key.created")["items"]
            if e["changes"]["after"]["name"] == "Console key"]
    assert len(made) == 1 and made[0]["credential"] == f"session:{signed_in['target']}"
    assert made[0]["actor"] == f"principal:{tenant.admin_id}"
    assert made[0]["user_agent"] == AGENT


def test_cli_changes_record_the_cli(cli: Cli, keyplane: Keyplane, tenant: Tenant,
                                    http: httpx2.Client) -> None:
    done = cli.run("keys", "create", "--tenant", tenant.id, "--name", "from cli", "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    e = one(http, tenant.management_key, action="key.created", target=made["id"])
    assert e["actor"] == "cli:auditor" and e["credential"] == "cli"
    assert made["key"] not in json.dumps(e)


@pytest.fixture
def partner(http: httpx2.Client, tenant: Tenant, operator_key: str) -> Partner:
    return approved_app(http, tenant.management_key, operator_key)


def test_rfc7009_revocation_by_a_real_oauth_client_is_audited(
        server: RunningServer, http: httpx2.Client, partner: Partner, tenant: Tenant,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with httpx2.Client(base_url=server.url, timeout=10) as browser:
        code, verifier = get_code(browser, partner, tenant.admin_email, tenant.admin_password)
    tokens = exchange(http, partner, code, verifier).json()
    authorized = one(http, tenant.management_key, action="connection.authorized")
    assert authorized["credential"].startswith("session:")  # the admin's consent

    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # a loopback test server
    with OAuth2Client(partner.client_id, partner.client_secret,
                      token_endpoint_auth_method="client_secret_basic",
                      headers={"User-Agent": AGENT}) as client:
        r = client.revoke_token(f"{server.url}/oauth/revoke", token=tokens["access_token"],
                                token_type_hint="access_token")
        assert r.status_code == 200, r.text
        e = one(http, tenant.management_key, action="connection.token_revoked")
        assert e["actor"].startswith("app:")
        assert e["credential"] == f"oauth_client:{partner.client_id}"
        assert e["user_agent"] == AGENT and e["outcome"] == "success"
        assert e["changes"]["before"]["revoked_at"] is None
        assert e["changes"]["after"]["revoked_at"] is not None
        assert tokens["access_token"] not in json.dumps(e)
        # the refresh token ends the connection: audited as the app's act too
        r = client.revoke_token(f"{server.url}/oauth/revoke", token=tokens["refresh_token"])
        assert r.status_code == 200
    e = one(http, tenant.management_key, action="connection.revoked")
    assert e["credential"] == f"oauth_client:{partner.client_id}"
    assert e["outcome"] == "success" and e["details"]["reason"].startswith("refresh token")


# -- the hash chain ------------------------------------------------------------------------------

def busy_tenant(kp: Keyplane, tenant: Tenant, n: int = 6) -> list[str]:
    for i in range(n):
        kp.keys.create(SYSTEM, tenant.id, {"name": f"k{i}", "scopes": ["keys:read"],
                                                 "owner_id": tenant.admin_id})
    with kp.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM audit_events WHERE tenant_id = :t "
                                    "ORDER BY seq"), {"t": tenant.id}).scalars().all()
    return list(rows)


def test_an_untouched_log_verifies(cli: Cli, keyplane: Keyplane, tenant: Tenant) -> None:
    busy_tenant(keyplane, tenant)
    done = cli.run("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verifies" in done.stdout
    done = cli.run("audit", "verify", "--tenant", tenant.id, "--json")
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["chains"][0]["entries"] >= 9


@pytest.mark.parametrize("tamper", ["edited", "deleted", "swapped"])
def test_verify_finds_a_tampered_row_and_says_where(cli: Cli, keyplane: Keyplane,
                                                     tenant: Tenant, tamper: str) -> None:
    ids = busy_tenant(keyplane, tenant)
    other = busy_tenant(keyplane, make_other(keyplane), 2)  # another tenant stays intact
    victim, neighbour = ids[4], ids[6]
    with keyplane.engine.begin() as conn:
        seqs = dict(conn.execute(sa.text("SELECT id, seq FROM audit_events WHERE id IN "
                                         "(:a, :b)"), {"a": victim, "b": neighbour}).all())
        if tamper == "edited":
            conn.execute(sa.text("UPDATE audit_events SET actor = 'principal:usr_nobody' "
                                 "WHERE id = :id"), {"id": victim})
        elif tamper == "deleted":
            conn.execute(sa.text("DELETE FROM audit_events WHERE id = :id"), {"id": victim})
        else:
            conn.execute(sa.text("UPDATE audit_events SET seq = :s WHERE id = :id"),
                         {"s": seqs[neighbour], "id": victim})
            conn.execute(sa.text("UPDATE audit_events SET seq = :s WHERE id = :id"),
                         {"s": seqs[victim], "id": neighbour})
    done = cli.run("audit", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    text = done.stderr
    where = f"tenant {tenant.id}, sequence {seqs[victim]}"
    assert where in text, text
    if tamper == "edited":
        assert f"entry {victim}" in text and "edited" in text
    elif tamper == "deleted":
        assert "missing" in text and f"entry {ids[5]}" in text
    else:
        assert f"entry {neighbour}" in text  # the row now at the victim's place
    assert "does NOT verify" in text
    report = json.loads(cli.run("audit", "verify", "--json").stdout)
    assert report["ok"] is False
    assert {b["tenant_id"] for b in report["breaks"]} == {tenant.id}  # only where it happened
    assert other  # the other tenant's chain was walked too
    assert cli.run("audit", "verify", "--tenant", tenant.id).returncode == 1


def make_other(kp: Keyplane) -> Tenant:
    from tests.conftest import make_tenant
    return make_tenant(kp, "Other")


def test_concurrent_appends_keep_one_unbroken_chain(keyplane: Keyplane, tenant: Tenant) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(8):
                keyplane.keys.create(SYSTEM, tenant.id, {"name": f"t{n}-{i}",
                                                         "scopes": ["keys:read"],
                                                 "owner_id": tenant.admin_id})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    result = keyplane.audit.verify(tenant.id)
    assert result.ok, [b.describe() for b in result.breaks]
    with keyplane.engine.connect() as conn:
        seqs = conn.execute(sa.text("SELECT seq FROM audit_events WHERE tenant_id = :t "
                                    "ORDER BY seq"), {"t": tenant.id}).scalars().all()
    assert list(seqs) == list(range(1, len(seqs) + 1)) and len(seqs) >= 35


# -- filters, cursor, export ---------------------------------------------------------------

def test_filters_and_a_cursor_stable_under_inserts(http: httpx2.Client, keyplane: Keyplane,
                                                   tenant: Tenant, clock: SettableClock) -> None:
    start = clock.now()
    made = [keyplane.keys.create(SYSTEM, tenant.id, {"name": f"f{i}", "scopes": ["keys:read"],
                                                 "owner_id": tenant.admin_id})
            for i in range(5)]
    clock.advance(hours=2)
    later = keyplane.keys.create(SYSTEM, tenant.id, {"name": "late", "scopes": ["keys:read"],
                                                 "owner_id": tenant.admin_id})
    key = tenant.management_key

    assert [e["target"] for e in entries(http, key, target=made[2].key.id)["items"]] \
        == [made[2].key.id]
    by_system = entries(http, key, actor="system", action="key.created")["items"]
    assert {e["target"] for e in by_system} >= {m.key.id for m in made}
    window = entries(http, key, action="key.created", since=(start.isoformat()),
                     until=(clock.now().isoformat()))["items"]
    assert {m.key.id for m in made} <= {e["target"] for e in window}
    assert later.key.id not in {e["target"] for e in window}
    recent = entries(http, key, since=clock.now().isoformat())["items"]
    assert [e["target"] for e in recent] == [later.key.id]

    # page through key.created two at a time while new entries are appended
    seen: list[str] = []
    page = entries(http, key, action="key.created", limit=2)
    seen += [e["id"] for e in page["items"]]
    keyplane.keys.create(SYSTEM, tenant.id, {"name": "meanwhile", "scopes": ["keys:read"],
                                                 "owner_id": tenant.admin_id})
    while page["next_cursor"]:
        page = entries(http, key, action="key.created", limit=2, cursor=page["next_cursor"])
        seen += [e["id"] for e in page["items"]]
    assert len(seen) == len(set(seen)) == 7  # ops + 5 + late; nothing twice, nothing new
    assert page["next_cursor"] is None
    empty = entries(http, key, since=clock.now().isoformat(), until=start.isoformat())
    assert empty["items"] == [] and empty["next_cursor"] is None  # an empty window

    for params, name in [({"cursor": "not-a-cursor"}, "cursor"),
                         ({"since": "yesterday"}, "since"),
                         ({"actor": "x" * 81}, "actor"),
                         ({"target": "a b"}, "target"),
                         ({"action": "Key Created"}, "action")]:
        r = http.get("/v1/audit-events", params=params, headers=auth(key))
        assert 400 <= r.status_code < 500, (params, r.text)
        assert name in json.dumps(r.json()["error"]), (params, r.text)


def test_export_jsonl(cli: Cli, keyplane: Keyplane, tenant: Tenant, tmp_path: Path) -> None:
    busy_tenant(keyplane, tenant, 3)
    make_other(keyplane)
    out = tmp_path / "audit.jsonl"
    done = cli.run("audit", "export", "--tenant", tenant.id, "--format", "jsonl",
                   "--output", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert all(e["tenant_id"] == tenant.id for e in lines)
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    done = cli.run("audit", "export", "--format", "jsonl")  # every chain, to stdout
    assert done.returncode == 0 and len(done.stdout.splitlines()) > len(lines)
    assert cli.run("audit", "export", "--format", "csv").returncode != 0


# -- retention --------------------------------------------------------------------------------

def test_retention_prunes_and_the_rest_still_verifies(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, clock: SettableClock,
        cli: Cli) -> None:
    r = http.patch(f"/v1/tenants/{tenant.id}", json={"policy": {"audit_retention_days": 30}},
                   headers=auth(tenant.management_key))
    assert r.status_code == 200 and r.json()["policy"]["audit_retention_days"] == 30
    bad = http.patch(f"/v1/tenants/{tenant.id}", json={"policy": {"audit_retention_days": 0}},
                     headers=auth(tenant.management_key))
    assert bad.status_code in (400, 422) and "audit_retention_days" in bad.text
    busy_tenant(keyplane, tenant, 4)
    other = make_other(keyplane)  # no retention: keeps everything
    clock.advance(days=31)
    kept = keyplane.keys.create(SYSTEM, tenant.id, {"name": "new", "scopes": ["keys:read"],
                                                 "owner_id": tenant.admin_id})
    before = keyplane.audit.verify(None)
    assert before.ok
    deleted = keyplane.audit.prune()
    assert set(deleted) == {tenant.id} and deleted[tenant.id] >= 8
    items = entries(http, tenant.management_key)["items"]
    assert {e["action"] for e in items} == {"key.created", "audit.pruned"}
    assert [e["target"] for e in items if e["action"] == "key.created"] == [kept.key.id]
    pruned = next(e for e in items if e["action"] == "audit.pruned")
    assert pruned["details"]["deleted"] == deleted[tenant.id]
    assert pruned["details"]["checkpoint_seq"] == deleted[tenant.id]
    done = cli.run("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert other.id  # untouched
    # cutting the first entry after the checkpoint is still caught
    with keyplane.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE tenant_id = :t AND seq = "
                             "(SELECT MIN(seq) FROM audit_events WHERE tenant_id = :t)"),
                     {"t": tenant.id})
    done = cli.run("audit", "verify", "--tenant", tenant.id)
    assert done.returncode == 1 and "missing" in done.stderr
    assert cli.run("audit", "prune", "--json").returncode == 0


# -- the migration -----------------------------------------------------------------------------

def test_the_migration_chains_the_entries_written_before_it(
        database: tuple[str, str | None], tmp_path: Path, clock: SettableClock) -> None:
    """0009_audit_chain numbers and hashes existing rows per tenant; new entries continue the
    chain, and the whole log verifies."""
    from keyplane.bootstrap import build
    from keyplane.storage.sql import migrate
    from keyplane.storage.sql.engine import make_engine
    from tests.conftest import make_settings

    url, schema = database
    engine = make_engine(url, schema=schema)
    try:
        migrate.upgrade(engine, "0008_hygiene")
        with engine.begin() as conn:
            for i, (tenant_id, at) in enumerate([
                    ("ten_a", "2026-01-01 00:00:00.123456"), ("ten_b", "2026-01-01 00:00:01"),
                    ("ten_a", "2026-01-02 00:00:00"), (None, "2026-01-03 00:00:00"),
                    ("ten_a", "2026-01-04 00:00:00")]):
                conn.execute(sa.text(
                    "INSERT INTO audit_events (id, at, tenant_id, actor, action, target, "
                    "outcome, ip, request_id, details) VALUES (:id, :at, :t, 'system', "
                    "'key.created', 'key_x', 'success', '192.0.2.1', NULL, :d)"),
                    {"id": f"evt_0000000{i}", "at": at, "t": tenant_id,
                     "d": json.dumps({"n": i, "name": "✓"})})
        migrate.upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT tenant_id, seq FROM audit_events ORDER BY id")
                                ).all()
        assert [tuple(r) for r in rows] == [("ten_a", 1), ("ten_b", 1), ("ten_a", 2),
                                            (None, 1), ("ten_a", 3)]
    finally:
        engine.dispose()
    kp = build(make_settings(tmp_path, url), clock=clock, schema=schema, migrate_db=True)
    try:
        result = kp.audit.verify(None)
        assert result.ok, [b.describe() for b in result.breaks]
        assert sorted(c.entries for c in result.chains) == [1, 1, 3]
        with kp.ctx.uow() as uow:  # the next entry continues ten_a's chain
            kp.ctx.audit(uow, SYSTEM, "tenant.updated", "ten_a", tenant_id="ten_a")
            uow.commit()
        result = kp.audit.verify("ten_a")
        assert result.ok and result.chains[0].head_seq == 4
    finally:
        kp.close()
