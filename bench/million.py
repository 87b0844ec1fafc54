"""One million keys in PostgreSQL: cache-miss verification latency and memory per cached key.

Setup (not measured): a throwaway schema migrated by Keyplane, 100 tenants with an admin each
(through the services), then 1,000,000 keys and their secrets bulk-inserted with ``COPY`` (the
same rows the services write: HMAC digests under the configured pepper, scopes, expiry) and
``ANALYZE``. The schema is dropped at the end.

Measured:
* cache-miss verification (``Verifier.verify`` of keys never seen, so every call reads storage:
  secret by digest, key, tenant, owner, groups), p50 / p99, against a baseline measured in the
  same run on the same connection pool: one primary-key ``SELECT`` of a key row;
* memory per cached key: ``tracemalloc`` around loading N snapshots into the server's
  verification cache (snapshot, cache key and LRU entry), and likewise for the SDK's verdict
  cache. Target: under 1 KiB each.

    .venv/bin/python bench/million.py [--keys 1000000] [--samples 2000] [--json]
"""

from __future__ import annotations

import gc
import json
import os
import random
import secrets
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from _common import arguments, report

POSTGRES_URL = os.environ.get("KEYPLANE_BENCH_POSTGRES_URL",
                              os.environ.get("KEYPLANE_TEST_POSTGRES_URL",
                                             "postgresql://postgres@127.0.0.1:5432/test"))
TENANTS = 100
LIMIT_BYTES = 1024


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def fake_key(prefix: str, rng: random.Random) -> str:
    """A well-formed key (random.choices is fine for a bench's test data, not for real keys)."""
    from keyplane.core import tokens

    body = "".join(rng.choices(tokens.ALPHABET, k=tokens.BODY_LENGTH))
    return f"{prefix}_{body}{tokens.checksum(prefix, body)}"


def bulk_insert(kp: Any, owners: list[tuple[str, str]], count: int, samples: int,
                progress: Any) -> list[str]:
    """COPY ``count`` keys; returns ``samples`` of their secrets, spread over the whole set."""
    from keyplane.core import ids

    rng = random.Random(1)
    prefix = kp.settings.key_prefix
    hasher = kp.ctx.hasher
    pepper = hasher.current.id
    now = datetime.now(UTC)
    expires = now + timedelta(days=90)
    scopes = json.dumps(["contacts:write", "payments:read"])
    keep = set(rng.sample(range(count), samples))
    kept: list[str] = []
    ms = int(now.timestamp() * 1000) - count
    raw_conn = kp.engine.raw_connection()
    try:
        conn = raw_conn.driver_connection
        chunk = 50_000
        for first in range(0, count, chunk):
            keys, secrets_ = [], []
            for i in range(first, min(first + chunk, count)):
                raw = fake_key(prefix, rng)
                tenant_id, owner_id = owners[i % len(owners)]
                key_id = ids.new_id("key", ms + i)
                start = raw[len(prefix) + 1:len(prefix) + 9]
                keys.append((key_id, tenant_id, owner_id, f"bench {i}", "", prefix, start,
                             scopes, "bench", now, now, expires, 90, "[]", False, True, "{}"))
                secrets_.append((ids.new_id("sec", ms + i), key_id, hasher.digest(raw),
                                 pepper, start, now))
                if i in keep:
                    kept.append(raw)
            with conn.cursor() as cur:
                with cur.copy("COPY api_keys (id, tenant_id, owner_id, name, description, "
                              "prefix, start, scopes, created_by, created_at, updated_at, "
                              "expires_at, lifetime_days, allowed_ips, require_tls, enabled, "
                              "meta) FROM STDIN") as copy:
                    for row in keys:
                        copy.write_row(row)
                with cur.copy("COPY key_secrets (id, key_id, digest, pepper_id, start, "
                              "created_at) FROM STDIN") as copy:
                    for row in secrets_:
                        copy.write_row(row)
            progress(f"inserted {min(first + chunk, count):,} keys")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("ANALYZE api_keys")
            cur.execute("ANALYZE key_secrets")
        conn.commit()
    finally:
        raw_conn.close()
    rng.shuffle(kept)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__ or "", http=False)
    parser.add_argument("--keys", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None,
                        help="cache-miss verifications to time")
    parser.add_argument("--memory-keys", type=int, default=None,
                        help="keys loaded into a cache to measure memory per key")
    args = parser.parse_args(argv)
    count = args.keys or (100_000 if args.quick else 1_000_000)
    samples = args.samples or (500 if args.quick else 2000)
    memory_keys = args.memory_keys or (5_000 if args.quick else 20_000)
    say = (lambda m: None) if args.json else (lambda m: print(" ", m, file=sys.stderr))

    from keyplane.bootstrap import build
    from keyplane.cache.local import VerificationCache
    from keyplane.config import Settings
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM
    from keyplane.services.verify import cache_key

    schema = "bench_" + secrets.token_hex(5)
    admin_engine = sa.create_engine(POSTGRES_URL.replace("postgresql://",
                                                         "postgresql+psycopg://", 1))
    with admin_engine.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="keyplane-million-"))
    try:
        kp = build(Settings(data_dir=tmp, database_url=POSTGRES_URL,
                            usage_flush_seconds=3600), schema=schema, migrate_db=True)
        kp.catalogue.seed()
        owners = []
        for t in range(TENANTS):
            tenant = kp.tenants.create(SYSTEM, {"name": f"Tenant {t}"})
            admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                         {"email": f"admin{t}@example.com", "role": "admin"})
            owners.append((tenant.id, admin.id))
        started = time.perf_counter()
        kept = bulk_insert(kp, owners, count, samples + memory_keys, say)
        kept, for_memory = kept[:samples], kept[samples:]
        setup_seconds = time.perf_counter() - started
        say(f"{count:,} keys in {setup_seconds:.0f}s")

        # -- baseline: one primary-key SELECT per call -------------------------------------
        with kp.engine.connect() as c:
            key_ids = [r[0] for r in c.execute(sa.text(
                "SELECT id FROM api_keys TABLESAMPLE SYSTEM (1) LIMIT :n"), {"n": samples})]
        select_times = []
        stmt = sa.text("SELECT * FROM api_keys WHERE id = :id")
        for key_id in key_ids:
            t0 = time.perf_counter()
            with kp.engine.connect() as c:
                c.execute(stmt, {"id": key_id}).fetchone()
            select_times.append(time.perf_counter() - t0)

        # -- cache-miss verification -------------------------------------------------------
        verifier = kp.verifier
        required = frozenset({"contacts:read"})
        miss_times = []
        for raw in kept:
            t0 = time.perf_counter()
            verdict = verifier.verify(raw, required=required, tls=True)
            miss_times.append(time.perf_counter() - t0)
            if not verdict.valid:
                raise AssertionError(f"a bench key did not verify: {verdict.decision}")
        say(f"{len(kept)} cache-miss verifications")

        # -- memory per cached key ---------------------------------------------------------
        loader = verifier.loaders[kp.settings.key_prefix]
        digests = [kp.ctx.hasher.digest(raw) for raw in for_memory]
        with kp.ctx.uow(readonly=True) as uow:  # warm statement caches: not per-key memory
            loader(uow, digests[0])
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        cache = VerificationCache(len(for_memory) + 10, 3600)
        with kp.ctx.uow(readonly=True) as uow:
            for raw, digest in zip(for_memory, digests, strict=True):
                snapshot = loader(uow, digest)
                assert snapshot is not None
                cache.put(cache_key(raw), snapshot, cache.generation, None)
        gc.collect()
        server_per_key = (tracemalloc.get_traced_memory()[0] - before) / len(for_memory)
        tracemalloc.stop()
        say(f"memory of {len(for_memory):,} cached keys")
        sdk_per_key = sdk_cache_memory(len(for_memory))
        kp.close()
    finally:
        with admin_engine.begin() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin_engine.dispose()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

    ms = 1000.0
    p50, p99 = percentile(miss_times, 50), percentile(miss_times, 99)
    s50, s99 = percentile(select_times, 50), percentile(select_times, 99)
    rows = [
        {"metric": f"cache-miss verify p50 / PK SELECT p50 ({count:,} keys)",
         "ratio": p50 / s50, "target": "report",
         "detail": f"verify p50 {p50 * ms:.2f} ms, SELECT p50 {s50 * ms:.2f} ms"},
        {"metric": f"cache-miss verify p99 / PK SELECT p99 ({count:,} keys)",
         "ratio": p99 / s99, "target": "report",
         "detail": f"verify p99 {p99 * ms:.2f} ms, SELECT p99 {s99 * ms:.2f} ms "
                   f"(median {statistics.median(miss_times) * ms:.2f} ms, {len(kept)} calls)"},
        {"metric": "server cache: bytes per cached key / 1024",
         "ratio": server_per_key / LIMIT_BYTES, "target": "< 1", "ok": server_per_key < 1024,
         "detail": f"{server_per_key:.0f} bytes per key (snapshot, cache key, LRU entry, "
                   f"invalidation index; {memory_keys:,} keys cached)"},
        {"metric": "SDK verdict cache: bytes per cached key / 1024",
         "ratio": sdk_per_key / LIMIT_BYTES, "target": "< 1", "ok": sdk_per_key < 1024,
         "detail": f"{sdk_per_key:.0f} bytes per key (identity, digest, LRU entry; "
                   f"{memory_keys:,} keys cached)"},
    ]
    report("million", rows, as_json=args.json,
           extra={"keys": count, "setup_seconds": round(setup_seconds, 1),
                  "miss_p50_ms": round(p50 * ms, 3), "miss_p99_ms": round(p99 * ms, 3)})
    return 0 if all(r.get("ok", True) for r in rows) else 1


def sdk_cache_memory(n: int) -> float:
    """Bytes per entry of the SDK's verdict cache holding ``n`` distinct identities shaped as
    the middleware builds them from /v1/verify answers."""
    from keyplane.core import ids
    from keyplane.sdk import KeyplaneMiddleware
    from keyplane.sdk._cache import VerdictCache
    from keyplane.sdk._verifier import digest as _digest

    token = fake_key("kp", random.Random())
    mw = KeyplaneMiddleware(lambda *a: None, url="http://k", token=token, changes="off")
    owners = [(ids.new_id("loc"), ids.new_id("usr")) for _ in range(TENANTS)]  # as above
    answers = [json.dumps({"valid": True, "code": "VALID", "key_id": ids.new_id("key"),
                           "tenant_id": owners[i % TENANTS][0],
                           "owner_id": owners[i % TENANTS][1],
                           "kind": "key", "scopes": ["contacts:write", "payments:read"],
                           "expires_at": None, "ratelimit": None, "cacheable": True})
               for i in range(n)]
    raws = [fake_key("kp", random.Random(i)) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = VerdictCache(n + 10, 3600, 3600)
    cache.live = True
    for raw, answer in zip(raws, answers, strict=True):
        result = mw.verifier.result(json.loads(answer))
        assert result.identity is not None
        cache.put(_digest(raw.encode(), "203.0.113.5", True), result.identity, expires_in=None,
                  generation=cache.generation)
    gc.collect()
    per = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    return per


if __name__ == "__main__":
    sys.exit(main())
