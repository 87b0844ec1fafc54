"""A secret is shown once, by the response that issues it, and nowhere else: not in any other
response, not in any log record, not in any database row or database file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from keyplane.logs import JsonFormatter
from tests.conftest import Tenant, auth
from tests.support import typo


def fragments(secret: str) -> list[str]:
    """The secret, its body, and every 8-character window of the part never displayed
    (``start``, the first 8 characters after the prefix, is shown in lists on purpose).
    A chance match of 8 random base62 characters is about 1 in 2e14 per position."""
    rest = secret.partition("_")[2]
    hidden = rest[8:]
    return [secret, rest] + [hidden[i:i + 8] for i in range(len(hidden) - 7)]


def leaks(secret: str, text: str) -> list[str]:
    return [f for f in fragments(secret) if f in text]


def test_secrets_appear_only_in_the_response_that_issues_them(
    http: httpx2.Client, tenant: Tenant, verifier_key: str, keyplane: Keyplane,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    responses: list[tuple[str, str]] = []

    def call(label: str, method: str, path: str, key: str, status: int,
             body: Any = None) -> Any:
        r = http.request(method, path, json=body, headers=auth(key))
        assert r.status_code == status, (label, r.text)
        responses.append((label, r.text))
        return r.json() if r.content else None

    mk, vk = tenant.management_key, verifier_key
    created = call("create", "POST", "/v1/keys", mk, 201,
                   {"name": "leak test", "scopes": ["contacts:read"], "meta": {"a": 1}})
    first, kid = created["key"], created["id"]
    call("verify first", "POST", "/v1/verify", vk, 200, {"key": first, "tls": True})
    call("verify named", "POST", "/v1/verify", vk, 200,
         {"key": f"leak test:{first}", "scopes": ["contacts:read"], "tls": True})
    call("verify typo", "POST", "/v1/verify", vk, 200, {"key": typo(first), "tls": True})
    call("verify plain http", "POST", "/v1/verify", vk, 200, {"key": first, "tls": False})
    call("list", "GET", "/v1/keys", mk, 200)
    call("show", "GET", f"/v1/keys/{kid}", mk, 200)
    call("edit", "PATCH", f"/v1/keys/{kid}", mk, 200, {"description": "edited"})
    call("lock", "PATCH", f"/v1/keys/{kid}", mk, 200, {"enabled": False})
    call("verify locked", "POST", "/v1/verify", vk, 200, {"key": first, "tls": True})
    call("unlock", "PATCH", f"/v1/keys/{kid}", mk, 200, {"enabled": True})
    rotated = call("rotate", "POST", f"/v1/keys/{kid}/rotate", mk, 200)
    second = rotated["key"]
    call("verify old in grace", "POST", "/v1/verify", vk, 200, {"key": first, "tls": True})
    call("verify new", "POST", "/v1/verify", vk, 200, {"key": second, "tls": True})
    call("show rotated", "GET", f"/v1/keys/{kid}", mk, 200)
    dup = call("duplicate", "POST", f"/v1/keys/{kid}/duplicate", mk, 201, {"name": "copy"})
    third = dup["key"]
    call("verify copy", "POST", "/v1/verify", vk, 200, {"key": third, "tls": True})
    call("list again", "GET", "/v1/keys", mk, 200)
    call("audit", "GET", "/v1/audit-events", mk, 200)
    call("revoke", "DELETE", f"/v1/keys/{kid}", mk, 204)
    call("verify revoked old", "POST", "/v1/verify", vk, 200, {"key": first, "tls": True})
    call("verify revoked new", "POST", "/v1/verify", vk, 200, {"key": second, "tls": True})
    call("revoke copy", "DELETE", f"/v1/keys/{dup['id']}", mk, 204)
    call("verify revoked copy", "POST", "/v1/verify", vk, 200, {"key": third, "tls": True})
    call("show revoked", "GET", f"/v1/keys/{kid}", mk, 404)
    call("bad body", "POST", "/v1/keys", mk, 422, {"name": "x", "scopes": ["nope:read"]})
    keyplane.usage.flush()  # last_used_at reaches the database now, not in the background

    issued_by = {first: "create", second: "rotate", third: "duplicate"}
    every = {**issued_by, mk: None, vk: None}  # the credentials in the headers, too
    assert len(every) == 5
    for secret, label in every.items():
        where = [lb for lb, text in responses if leaks(secret, text)]
        assert where == ([label] if label else []), (label, where)

    # -- logs: every record, with its arguments and extra attributes
    records = all_logs.records
    assert any(r.name == "keyplane.access" for r in records)  # the server did log
    logged = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.args!r} {r.exc_text or ''} {vars(r)!r}"
        for r in records
    )
    for secret in every:
        assert leaks(secret, logged) == [], "a secret reached the logs"
    # ... and every record as the JSON log format writes it (KEYPLANE_LOG_FORMAT=json)
    lines = [JsonFormatter().format(r) for r in records]
    access = [json.loads(line) for line in lines if '"keyplane.access"' in line]
    assert access and all(a["request_id"] and a["status"] for a in access)
    for secret in every:
        assert leaks(secret, "\n".join(lines)) == [], "a secret reached the JSON logs"

    # -- the database: every row of every table, and the SQLite files byte for byte
    dump = dump_database(keyplane)
    assert kid in dump and created["start"] in dump  # the dump really holds the keys
    for secret in every:
        assert leaks(secret, dump) == [], "a secret reached the database"
    peppers = json.loads((keyplane.settings.data_dir / "peppers.json").read_text())
    for pepper in peppers["peppers"]:
        assert pepper["secret"] not in dump  # the pepper lives outside the database

    url = sa.make_url(keyplane.settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert path in files and Path(f"{path}-wal") in files  # WAL mode: both hold data
        raw = b"".join(p.read_bytes() for p in files)
        assert kid.encode() in raw
        for secret in every:
            for fragment in fragments(secret):
                assert fragment.encode() not in raw, "a secret reached the SQLite files"


def dump_database(kp: Keyplane) -> str:
    """Every row of every table, as text."""
    out: list[str] = []
    inspector = sa.inspect(kp.engine)
    tables = inspector.get_table_names()
    assert {"api_keys", "key_secrets", "audit_events", "changes"} <= set(tables)
    with kp.engine.connect() as conn:
        for name in tables:
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(sa.select(table)):
                out.append(f"{name} {tuple(row)!r}")
    return "\n".join(out)


def test_oauth_secrets_and_passwords_reach_no_log_line_and_no_metric(
    http: httpx2.Client, tenant: Tenant, operator_key: str, keyplane: Keyplane,
    all_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """A partner's client secret, its access and refresh tokens (first and rotated), the
    admin's password and the pepper go through approval, sign-in, consent, the token
    endpoint, refresh, introspection, verification and revocation; then no log record (as the
    JSON formatter writes it), nothing the process printed, and no line of /metrics holds
    any of them."""
    from tests.integration.oauth_support import (
        approved_app,
        exchange,
        get_code,
        introspect,
        refresh,
    )

    partner = approved_app(http, tenant.management_key, operator_key)
    code, verifier = get_code(http, partner, tenant.admin_email, tenant.admin_password)
    tokens = exchange(http, partner, code, verifier).json()
    http.cookies.clear()
    renewed = refresh(http, partner, tokens["refresh_token"]).json()
    assert introspect(http, partner, renewed["access_token"])["active"] is True
    verified = http.post("/v1/verify", json={"key": renewed["access_token"], "tls": True},
                         headers=auth(operator_key))
    assert verified.status_code == 200
    http.post("/oauth/revoke", data={"token": renewed["refresh_token"]},
              auth=(partner.client_id, partner.client_secret))
    metrics = http.get("/metrics").text
    peppers = json.loads((keyplane.settings.data_dir / "peppers.json").read_text())
    secrets = [partner.client_secret, tokens["access_token"], tokens["refresh_token"],
               renewed["access_token"], renewed["refresh_token"], tenant.admin_password,
               *(p["secret"] for p in peppers["peppers"])]
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in all_logs.records]
    printed = capfd.readouterr()
    assert len(lines) > 5
    for secret in secrets:
        for where, text in (("logs", "\n".join(lines)), ("stdout", printed.out),
                            ("stderr", printed.err), ("metrics", metrics)):
            assert secret not in text, f"a secret reached {where}"
