"""The console's API keys list for a tenant with 10,000 keys: server time per page.

Setup (not measured): a fresh Keyplane (SQLite file, or a throwaway PostgreSQL schema with
``--postgres``), one tenant with an admin who signs in through the real form, and 10,000 keys
written through the key repository in one transaction (no secrets: listing never reads them).

Measured, in process (the ASGI app called through httpx's ASGI transport, so the time is the
server's own: routing, session, rights, the query, the template), p50 and p99 of:
* the first page, ``/keys``;
* a search, ``/keys?q=…`` (name, description and start are searched);
* the locked filter, ``/keys?state=locked``;
* a page deep in the list, following ``Next page`` cursors 40 pages in;
against the same page of the JSON API (``GET /v1/keys?limit=25`` with a management key) measured
in the same run. Target: under 100 ms per console page.

    .venv/bin/python bench/console_keys.py [--keys 10000] [--samples 60] [--postgres] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import sqlalchemy as sa
from _common import arguments, report

POSTGRES_URL = os.environ.get("KEYPLANE_BENCH_POSTGRES_URL",
                              os.environ.get("KEYPLANE_TEST_POSTGRES_URL",
                                             "postgresql://postgres@127.0.0.1:5432/test"))
BUDGET_MS = 100.0
PASSWORD = "bench password 123"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextlib.contextmanager
def database(postgres: bool) -> Iterator[tuple[str, str | None, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="keyplane-bench-console-"))
    try:
        if not postgres:
            yield f"sqlite:///{tmp / 'keyplane.db'}", None, tmp
            return
        schema = "bench_" + secrets.token_hex(4)
        engine = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            yield POSTGRES_URL, schema, tmp
        finally:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seed(kp: Any, count: int) -> tuple[str, str]:
    """A tenant, its admin (email) and ``count`` keys; returns (admin email, management key)."""
    from keyplane.core import ids
    from keyplane.core.model import ApiKey, PrincipalKind
    from keyplane.core.rights import SYSTEM

    kp.catalogue.seed()
    tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})
    email = "admin@bench.example"
    admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                 {"email": email, "role": "admin", "password": PASSWORD})
    management = kp.keys.create(SYSTEM, tenant.id, {
        "name": "ops", "owner_id": admin.id, "scopes": ["keys:write"], "require_tls": False})
    now = datetime.now(UTC)
    words = ["zapier", "export", "billing", "crm", "sync", "import", "report", "webhook"]
    ms = int(now.timestamp() * 1000) - count
    with kp.ctx.uow() as uow:
        for i in range(count):
            created = now - timedelta(minutes=count - i)
            uow.keys.add(ApiKey(
                id=ids.new_id("key", ms + i), tenant_id=tenant.id, owner_id=admin.id,
                name=f"{words[i % len(words)]} {i}", prefix=kp.settings.key_prefix,
                start=secrets.token_hex(4), description=f"integration number {i}",
                scopes=["contacts:read", "payments:write"], created_at=created,
                updated_at=created, expires_at=created + timedelta(days=90), lifetime_days=90,
                enabled=i % 10 != 0,
                last_used_at=None if i % 3 else now - timedelta(days=i % 120)))
        uow.commit()
    return email, management.secret


async def timed(client: httpx2.AsyncClient, url: str, samples: int,
                headers: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        r = await client.get(url, headers=headers)
        out.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(app: Any, management_key: str, email: str, samples: int) -> dict[str, Any]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://bench") as client:
        form = await client.get("/signin")
        token = CSRF_RE.search(form.text)
        assert token
        r = await client.post("/signin", data={"email": email, "password": PASSWORD,
                                               "csrf_token": token.group(1), "next": ""})
        assert r.status_code == 303, r.text
        deep = "/keys"
        for _ in range(40):
            page = await client.get(deep)
            found = re.search(r'href="(/keys\?[^"]*cursor=[^"]+)" rel="next"', page.text)
            assert found, "no next page"
            deep = found.group(1).replace("&amp;", "&")
        pages = {"first page": "/keys", "search": "/keys?q=billing+4",
                 "locked filter": "/keys?state=locked", "40 pages in": deep}
        await timed(client, "/keys", 5)  # warm up
        api = await timed(client, "/v1/keys?limit=25", samples,
                          {"Authorization": f"Bearer {management_key}"})
        return {"api": api, **{name: await timed(client, url, samples)
                               for name, url in pages.items()}}


def main() -> None:
    parser = arguments(__doc__ or "", http=False)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.web.app import create_app

    with database(args.postgres) as (url, schema, tmp):
        kp = build(Settings(data_dir=tmp, database_url=url, log_level="warning"),
                   schema=schema, migrate_db=True)
        try:
            email, management = seed(kp, args.keys)
            kp.start()
            results = asyncio.run(measure(create_app(kp, manage_lifecycle=False), management,
                                          email, args.samples))
        finally:
            kp.close()
    api_p50 = statistics.median(results.pop("api"))
    rows = []
    for name, values in results.items():
        p50, p99 = statistics.median(values), pct(values, 99)
        rows.append({
            "metric": f"console /keys {name}, p99 ms / {BUDGET_MS:.0f} ms budget",
            "ratio": p99 / BUDGET_MS, "target": "< 1", "ok": p99 < BUDGET_MS,
            "detail": f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; the JSON API's page p50 "
                      f"{api_p50:.1f} ms ({p50 / api_p50:.1f}x)"})
    report(f"console_keys ({args.keys} keys, {'PostgreSQL' if args.postgres else 'SQLite'})",
           rows, as_json=args.json)


if __name__ == "__main__":
    main()
