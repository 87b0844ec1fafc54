"""``keyplane import`` as an operator runs it (the real command as a subprocess), on SQLite and
PostgreSQL: keys made by djangorestframework-api-key itself keep working through ``/v1/verify``
over a real server and through the SDK middleware, and their stored digest becomes Keyplane's on
first use; CSV plaintext keys are hashed and never kept; another Keyplane's export comes in by
digest; every import has a dry run, refuses bad rows with the reason and is idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.services.leaks import LeakReport
from keyplane.storage.sql.imports import key_imports
from keyplane.storage.sql.tables import api_keys, key_secrets
from tests.conftest import Tenant, auth
from tests.integration.procs import postgres_database
from tests.integration.test_backup import cli_env, run
from tests.sdk.conftest import Protected, protect  # noqa: F401  (the fixture)
from tests.support import sqlite_url, typo

HERE = Path(__file__).parent


def drf_database(tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    """A Django project's SQLite database with keys made by djangorestframework-api-key."""
    path = tmp_path / "django.sqlite3"
    done = subprocess.run([sys.executable, str(HERE / "drf_keys.py"), str(path)],
                          capture_output=True, text=True, timeout=120, check=True)
    return f"sqlite:///{path}", json.loads(done.stdout)


def allow_non_expiring(kp: Keyplane, tenant: Tenant) -> None:
    kp.tenants.update(SYSTEM, tenant.id, {"policy": {"allow_non_expiring": True,
                                                     "require_tls_default": False}})


def env_for(kp: Keyplane, database: tuple[str, str | None]) -> dict[str, str]:
    """The CLI's environment: this test's database (and schema) and data dir (its pepper)."""
    url, schema = database
    return cli_env(url, kp.settings.data_dir, schema)


def import_cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = run(env, "import", *args, "--json")
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def verify(http: httpx2.Client, verifier_key: str, key: str, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/verify", json={"key": key, **body}, headers=auth(verifier_key))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def secrets_of(kp: Keyplane, key_id: str) -> list[str]:
    with kp.engine.connect() as conn:
        return [d for (d,) in conn.execute(sa.select(key_secrets.c.digest).where(
            key_secrets.c.key_id == key_id))]


def import_row(kp: Keyplane, key_id: str) -> dict[str, Any]:
    with kp.engine.connect() as conn:
        row = conn.execute(key_imports.select().where(
            key_imports.c.key_id == key_id)).mappings().first()
    assert row is not None
    return dict(row)


def whoami(request: Request) -> JSONResponse:
    who = request.scope["keyplane"]
    return JSONResponse({"key_id": who["key_id"], "scopes": sorted(who["scopes"])})


def product_api() -> Starlette:
    return Starlette(routes=[Route("/", whoami)])


def test_drf_api_keys_keep_working_and_their_digest_becomes_keyplanes_on_first_use(
        keyplane: Keyplane, tenant: Tenant, tmp_path: Path, http: httpx2.Client,
        verifier_key: str, database: tuple[str, str | None],
        protect: Callable[..., Protected]) -> None:  # noqa: F811
    kp = keyplane
    allow_non_expiring(kp, tenant)
    url, made = drf_database(tmp_path)
    by_name = {k["name"]: k for k in made}
    scope_map = tmp_path / "scopes.toml"
    scope_map.write_text('default = ["contacts:read"]\n'
                         '[names]\n"billing sync" = ["contacts:write"]\n')
    env = env_for(kp, database)
    args = ("drf-api-key", "--from-database", url, "--tenant", tenant.id, "--scope-map",
            str(scope_map), "--owner", tenant.admin_email)

    code, dry = import_cli(env, *args, "--dry-run")
    assert (dry["would_import"], dry["imported"], dry["refused"]) == (3, 0, 1)
    refused = [r for r in dry["rows"] if r["status"] == "refused"]
    assert refused[0]["name"].startswith("old cron") and "revoked" in refused[0]["reason"]
    zapier = by_name["zapier"]["key"]
    assert verify(http, verifier_key, zapier)["code"] == "MALFORMED"  # nothing written

    code, first = import_cli(env, *args)
    assert code == 2  # some rows were refused
    assert (first["imported"], first["present"], first["refused"]) == (3, 0, 1)
    code, again = import_cli(env, *args)
    assert (again["imported"], again["present"], again["refused"]) == (0, 3, 1)
    assert {r["reason"] for r in again["rows"] if r["status"] == "present"} == {
        "already present"}
    ids = {r["name"].split(" (")[0]: r["key_id"] for r in first["rows"] if r["key_id"]}

    billing = by_name["billing sync"]
    key = kp.keys.get(SYSTEM, tenant.id, ids["billing sync"])
    assert key.name == "billing sync" and key.scopes == ["contacts:write"]
    assert key.created_at == datetime.fromisoformat(billing["created"])
    assert key.expires_at == datetime.fromisoformat(billing["expiry"])
    assert key.start == billing["prefix"]  # the library's own public prefix
    assert secrets_of(kp, key.id) == []  # only the library's digest so far
    assert import_row(kp, key.id)["legacy_digest"].startswith("sha512$$")

    out = verify(http, verifier_key, billing["key"], scopes=["contacts:write"])
    assert out["valid"] is True and out["key_id"] == key.id
    assert out["scopes"] == ["contacts:read", "contacts:write"]
    # the first use stored Keyplane's keyed HMAC and forgot the library's digest
    assert secrets_of(kp, key.id) == [kp.ctx.hasher.digest(billing["key"])]
    assert import_row(kp, key.id)["legacy_digest"] is None
    assert verify(http, verifier_key, billing["key"])["valid"] is True  # and again
    wrong = billing["key"][:-1] + ("A" if billing["key"][-1] != "A" else "B")
    assert verify(http, verifier_key, wrong)["code"] == "NOT_FOUND"
    assert verify(http, verifier_key, typo(zapier))["code"] == "NOT_FOUND"

    # a key that Django's pbkdf2 password hasher made (older versions of the library)
    pbkdf2 = by_name["legacy pbkdf2"]
    assert import_row(kp, ids["legacy pbkdf2"])["legacy_digest"].startswith("pbkdf2_sha256$")
    assert verify(http, verifier_key, pbkdf2["key"])["valid"] is True
    assert secrets_of(kp, ids["legacy pbkdf2"]) == [kp.ctx.hasher.digest(pbkdf2["key"])]
    # a revoked key in the source was not imported
    assert verify(http, verifier_key, by_name["old cron"]["key"])["code"] == "NOT_FOUND"

    # the SDK middleware: imported keys are asked about; without the option they are refused
    # offline like any string that is not in Keyplane's format
    app = protect(product_api(), imported_keys=True)
    r = app.http.get("/", headers=auth(zapier))
    assert r.status_code == 200 and r.json() == {"key_id": ids["zapier"],
                                                  "scopes": ["contacts:read"]}
    assert secrets_of(kp, ids["zapier"]) == [kp.ctx.hasher.digest(zapier)]
    assert app.http.get("/", headers=auth(typo(zapier))).status_code == 401
    strict = protect(product_api())
    assert strict.http.get("/", headers=auth(zapier)).status_code == 401

    # revoking an imported key works as for any key
    kp.keys.revoke(SYSTEM, tenant.id, ids["zapier"])
    assert verify(http, verifier_key, zapier)["code"] == "REVOKED"


@pytest.mark.postgres
def test_drf_api_keys_are_read_from_a_postgresql_database(
        keyplane: Keyplane, tenant: Tenant, tmp_path: Path, http: httpx2.Client,
        verifier_key: str, database: tuple[str, str | None]) -> None:
    """The Django project's database is PostgreSQL: a schema holding the library's real table
    (made by its own migrations and ``create_key``), read through ``--from-database
    postgresql://…`` with the schema in the URL's options."""
    kp = keyplane
    allow_non_expiring(kp, tenant)
    scope_map = tmp_path / "scopes.toml"
    scope_map.write_text('default = ["contacts:read"]\n')
    with postgres_database() as source:
        done = subprocess.run([sys.executable, str(HERE / "drf_keys.py"), source],
                              capture_output=True, text=True, timeout=120, check=True)
        made = {k["name"]: k for k in json.loads(done.stdout)}
        env = env_for(kp, database)
        args = ("drf-api-key", "--from-database", source, "--tenant", tenant.id,
                "--scope-map", str(scope_map), "--owner", tenant.admin_email)
        code, dry = import_cli(env, *args, "--dry-run")
        assert (dry["would_import"], dry["refused"]) == (3, 1)
        code, first = import_cli(env, *args)
        assert code == 2 and (first["imported"], first["present"], first["refused"]) == (3, 0, 1)
        code, again = import_cli(env, *args)
        assert (again["imported"], again["present"], again["refused"]) == (0, 3, 1)
    ids = {r["name"].split(" (")[0]: r["key_id"] for r in first["rows"] if r["key_id"]}
    assert set(ids) == {"billing sync", "zapier", "legacy pbkdf2"}
    billing = kp.keys.get(SYSTEM, tenant.id, ids["billing sync"])
    assert billing.start == made["billing sync"]["prefix"]
    assert billing.created_at == datetime.fromisoformat(made["billing sync"]["created"])
    assert billing.expires_at == datetime.fromisoformat(made["billing sync"]["expiry"])
    assert import_row(kp, billing.id)["legacy_digest"].startswith("sha512$$")
    assert import_row(kp, ids["legacy pbkdf2"])["legacy_digest"].startswith("pbkdf2_sha256$")
    for name, key_id in ids.items():  # each verifies, and its digest becomes Keyplane's
        out = verify(http, verifier_key, made[name]["key"])
        assert out["valid"] is True and out["key_id"] == key_id, (name, out)
        assert secrets_of(kp, key_id) == [kp.ctx.hasher.digest(made[name]["key"])]
    assert verify(http, verifier_key, made["old cron"]["key"])["code"] == "NOT_FOUND"
    assert verify(http, verifier_key, typo(made["zapier"]["key"]))["code"] == "NOT_FOUND"


CSV_HEADER = "name,key,scopes,expires_at,created_at,owner,description,allowed_ips,require_tls\n"


def test_csv_keys_are_hashed_on_import_refused_rows_say_why_and_a_rerun_imports_nothing(
        keyplane: Keyplane, tenant: Tenant, tmp_path: Path, http: httpx2.Client,
        verifier_key: str, database: tuple[str, str | None]) -> None:
    kp = keyplane
    later = (datetime.now(UTC) + timedelta(days=60)).replace(microsecond=0)
    foreign = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    native = kp.keys.create(SYSTEM, tenant.id, {"name": "native", "scopes": ["contacts:read"],
                                                 "require_tls": False,
                                                 "owner_id": tenant.admin_id}).secret
    from keyplane.core.tokens import generate
    keyplane_format = generate(kp.ctx.key_prefix)
    rows = [
        f"stripe-like,{foreign},contacts:read,{later.isoformat()},2024-01-02,"
        f"{tenant.admin_email},from the old system,,false",
        f"kp format,{keyplane_format},contacts:write,{later.date()},,,,10.0.0.0/8,false",
        f"too short,abc123,contacts:read,{later.isoformat()},,,,,",
        f"bad scope,{'x' * 30},nope:read,{later.isoformat()},,,,,",
        f"no expiry,{'y' * 30},contacts:read,,,,,,",
        f"expired,{'z' * 30},contacts:read,2020-01-01,,,,,",
        f"stranger,{'w' * 30},contacts:read,{later.isoformat()},,nobody@example.com,,,",
        f"duplicate,{foreign},contacts:read,{later.isoformat()},,,,,",
        f"already here,{native},contacts:read,{later.isoformat()},,,,,",
        f"bad ip,{'v' * 30},contacts:read,{later.isoformat()},,,,999.1.1.1,",
    ]
    path = tmp_path / "keys.csv"
    path.write_text(CSV_HEADER + "\n".join(rows) + "\n")
    env = env_for(kp, database)
    args = ("csv", str(path), "--tenant", tenant.id, "--owner", tenant.admin_email)

    _code, dry = import_cli(env, *args, "--dry-run")
    assert dry["would_import"] == 2 and dry["imported"] == 0
    _code, out = import_cli(env, *args)
    by_name = {r["name"]: r for r in out["rows"]}
    assert {n for n, r in by_name.items() if r["status"] == "imported"} == {
        "stripe-like", "kp format"}
    reasons = {n: r["reason"] for n, r in by_name.items() if r["status"] != "imported"}
    assert "16 to 256 characters" in reasons["too short"]
    assert "nope:read" in reasons["bad scope"]
    assert "never expires" in reasons["no expiry"]
    assert "already expired" in reasons["expired"]
    assert "nobody@example.com" in reasons["stranger"]
    assert reasons["duplicate"] == "the same key as row 2"
    assert reasons["already here"] == "already present"
    assert "allowed_ips" in reasons["bad ip"]
    assert by_name["already here"]["status"] == "present"
    printed = json.dumps(out)
    assert foreign not in printed and keyplane_format not in printed  # never echoed

    # the key works, keeps its own format and settings; only its keyed digest is stored
    got = verify(http, verifier_key, foreign)
    assert got["valid"] is True and got["name"] == "stripe-like"
    key = kp.keys.get(SYSTEM, tenant.id, got["key_id"])
    assert key.created_at == datetime(2024, 1, 2, tzinfo=UTC) and key.expires_at == later
    assert key.description == "from the old system" and key.require_tls is False
    assert key.start == foreign[:4]
    assert secrets_of(kp, key.id) == [kp.ctx.hasher.digest(foreign)]
    with kp.engine.connect() as conn:
        dump = "\n".join(str(tuple(r)) for table in (api_keys, key_secrets, key_imports)
                         for r in conn.execute(table.select()))
    assert foreign not in dump and keyplane_format not in dump
    kp_key = verify(http, verifier_key, keyplane_format, ip="10.1.2.3")
    assert kp_key["valid"] is True and kp_key["scopes"] == ["contacts:read", "contacts:write"]
    assert verify(http, verifier_key, keyplane_format, ip="192.0.2.1")["code"] == (
        "IP_NOT_ALLOWED")

    _code, again = import_cli(env, *args)
    assert again["imported"] == 0 and again["present"] == 4  # the duplicate row too

    # found in a chat log (keyplane keys report-leak): an imported foreign key is found too
    [outcome] = kp.leaks.handle(SYSTEM, [LeakReport(token=foreign, type="manual")])
    assert outcome.found and outcome.id == key.id and outcome.action == "revoked"
    assert verify(http, verifier_key, foreign)["code"] == "REVOKED"


def test_another_keyplanes_export_is_imported_by_digest(
        keyplane: Keyplane, tenant: Tenant, tmp_path: Path, http: httpx2.Client,
        verifier_key: str, database: tuple[str, str | None]) -> None:
    from tests.integration.test_backup import open_kp

    # another Keyplane with the same pepper (the data dir holds it): its keys verify here
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = open_kp(sqlite_url(other_dir), keyplane.settings.data_dir)
    try:
        from tests.conftest import make_tenant
        source = make_tenant(other, "Source", email=tenant.admin_email)
        made = other.keys.create(SYSTEM, source.id, {
            "name": "moved", "scopes": ["contacts:read"], "require_tls": False,
            "expires_in_days": 30, "owner_id": source.admin_id})
        gone = other.keys.create(SYSTEM, source.id, {"name": "gone", "require_tls": False,
                                                      "owner_id": source.admin_id})
        other.keys.revoke(SYSTEM, source.id, gone.key.id)
        export = tmp_path / "export.jsonl"
        with export.open("w") as out:
            other.backup.export(out, tenant_id=source.id)
    finally:
        other.close()
    assert made.secret not in export.read_text()

    env = env_for(keyplane, database)
    scope_map = tmp_path / "map.json"
    scope_map.write_text(json.dumps({"rename": {"tenant:write": ["contacts:read"]}}))
    args = ("keyplane", str(export), "--tenant", tenant.id, "--scope-map", str(scope_map))
    _code, out = import_cli(env, *args)
    by_name = {r["name"]: r for r in out["rows"]}
    assert by_name["moved"]["status"] == "imported"
    assert by_name["moved"]["key_id"] == made.key.id  # the same id
    assert "revoked" in by_name["gone"]["reason"]
    got = verify(http, verifier_key, made.secret)
    assert got["valid"] is True and got["key_id"] == made.key.id
    assert got["owner_id"] == tenant.admin_id  # matched by email
    assert got["expires_at"] is not None
    _code, again = import_cli(env, *args)
    assert again["imported"] == 0 and {r["status"] for r in again["rows"]} >= {"present"}


def test_a_missing_tenant_or_bad_file_is_refused_whole(
        keyplane: Keyplane, tenant: Tenant, tmp_path: Path,
        database: tuple[str, str | None]) -> None:
    env = env_for(keyplane, database)
    path = tmp_path / "keys.csv"
    path.write_text("name,secret\nx,y\n")
    done = run(env, "import", "csv", str(path), "--tenant", tenant.id)
    assert done.returncode == 1 and "unknown column 'secret'" in done.stderr + done.stdout
    path.write_text(CSV_HEADER)
    done = run(env, "import", "csv", str(path), "--tenant", "ten_nope")
    assert done.returncode == 1 and "no tenant" in done.stderr + done.stdout


@pytest.mark.parametrize("rows", [2000])
def test_a_2000_row_csv_imports_in_batches(keyplane: Keyplane, tenant: Tenant, tmp_path: Path,
                                           rows: int) -> None:
    """The bench's shape (bench/import_csv.py), small: every row imported once."""
    from bench.import_csv import write_csv

    path = tmp_path / "big.csv"
    write_csv(path, rows, tenant.admin_email)
    with path.open(newline="") as lines:
        from keyplane.services.import_sources import csv_rows
        report = keyplane.imports.run("csv", tenant.id, csv_rows(lines))
    assert report.count("imported") == rows and report.count("refused") == 0
    with path.open(newline="") as lines:
        again = keyplane.imports.run("csv", tenant.id, csv_rows(lines))
    assert again.count("present") == rows
