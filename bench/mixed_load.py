"""Mixed load on two Keyplane workers sharing PostgreSQL and Redis, driven from this process
over loopback for a bounded time: 95 % verifications, 4 % management calls, 1 % revocations.

What must hold (the run exits 1 otherwise):

* no 5xx and no transport error;
* no wrong answer: a live key verifies ``VALID`` on either worker; a key whose revocation
  answered more than ``--bound`` seconds ago (the documented propagation bound with Redis is
  milliseconds; 1 s by default leaves room for a loaded machine) is never ``VALID`` on either
  worker (between the revocation's request and that moment either answer is accepted);
* memory flat: each worker's RSS grows less than 10 % from the end of the warm-up (the first
  fifth of the run, at least 5 s) to the end.

It reports p50 / p99 / p99.9 latency (verifications and management calls apart), throughput,
the largest delay seen between a revocation's answer and the last ``VALID`` for that key, and
the RSS figures. The database is a private PostgreSQL schema (dropped afterwards) and Redis
keys and channels use a unique prefix, so it never disturbs anyone else's data.

    .venv/bin/python bench/mixed_load.py [--seconds 300] [--connections 16] [--json]

Environment: KEYPLANE_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test),
KEYPLANE_TEST_REDIS_URL (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402

KEYS = 200  # live keys at the start


@dataclass
class Result:
    seconds: float
    requests: int = 0
    verifications: int = 0
    management: int = 0
    revocations: int = 0
    server_errors: int = 0  # 5xx
    transport_errors: int = 0
    unexpected: int = 0  # a 4xx the driver did not expect
    wrong_answers: list[str] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_kb: dict[str, list[int]] = field(default_factory=dict)  # worker -> [warm, end]
    rss_growth: dict[str, float] = field(default_factory=dict)
    max_valid_after_revoke_ms: float = 0.0
    bound_seconds: float = 1.0
    throughput_rps: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.server_errors == 0 and self.transport_errors == 0 and self.unexpected == 0
                and not self.wrong_answers and self.requests > 0
                and all(g < 0.10 for g in self.rss_growth.values()))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999),
            "max": round(ordered[-1] * 1000, 2), "count": len(ordered)}


class Driver:
    """The load: keeps which keys are live, being revoked and revoked (with when)."""

    def __init__(self, urls: list[str], management: str, verifier: str, owner: str,
                 live: dict[str, str], bound: float, result: Result) -> None:
        self.urls = urls
        self.management = {"Authorization": f"Bearer {management}"}
        self.verifier = {"Authorization": f"Bearer {verifier}"}
        self.owner = owner
        self.live = live  # secret -> key id
        self.live_list = list(live)
        self.revoking: set[str] = set()
        self.revoked: dict[str, float] = {}  # secret -> when its revocation answered
        self.revoked_list: list[str] = []
        self.bound = bound
        self.result = result
        self.latency: dict[str, list[float]] = {"verify": [], "management": [], "revoke": []}
        self.rng = random.Random(7)

    def _check(self, label: str, r: httpx2.Response, expected: tuple[int, ...]) -> bool:
        if r.status_code >= 500:
            self.result.server_errors += 1
            self.result.wrong_answers.append(f"{label}: {r.status_code} {r.text[:200]}")
            return False
        if r.status_code not in expected:
            self.result.unexpected += 1
            self.result.wrong_answers.append(f"{label}: {r.status_code} {r.text[:200]}")
            return False
        return True

    async def verify(self, client: httpx2.AsyncClient) -> None:
        revoked = self.revoked_list and self.rng.random() < 0.2
        secret = (self.rng.choice(self.revoked_list) if revoked
                  else self.rng.choice(self.live_list))
        sent = time.monotonic()
        was_live = secret in self.live and secret not in self.revoking
        revoked_at = self.revoked.get(secret)
        r = await client.post(self.rng.choice(self.urls) + "/v1/verify",
                              json={"key": secret, "tls": True}, headers=self.verifier)
        self.latency["verify"].append(time.monotonic() - sent)
        self.result.verifications += 1
        if not self._check("verify", r, (200,)):
            return
        code = r.json()["code"]
        if was_live and secret not in self.revoking and secret in self.live and code != "VALID":
            self.result.wrong_answers.append(f"a live key answered {code}")
        if revoked_at is not None and code == "VALID":
            late = sent - revoked_at
            self.result.max_valid_after_revoke_ms = max(
                self.result.max_valid_after_revoke_ms, late * 1000)
            if late > self.bound:
                self.result.wrong_answers.append(
                    f"a key revoked {late:.3f}s before the request was accepted")

    async def manage(self, client: httpx2.AsyncClient) -> None:
        base = self.rng.choice(self.urls)
        secret = self.rng.choice(self.live_list)
        key_id = self.live.get(secret)
        choice = self.rng.random()
        sent = time.monotonic()
        if choice < 0.4:
            r = await client.get(base + "/v1/keys", params={"limit": 20},
                                 headers=self.management)
            expected: tuple[int, ...] = (200,)
        elif choice < 0.7 and key_id:
            r = await client.get(f"{base}/v1/keys/{key_id}", headers=self.management)
            expected = (200, 404)  # it may have been revoked meanwhile
        elif choice < 0.85 and key_id:
            r = await client.patch(f"{base}/v1/keys/{key_id}", headers=self.management,
                                   json={"description": f"load {self.rng.random():.6f}"})
            expected = (200, 404)
        else:
            r = await client.post(base + "/v1/keys", headers=self.management,
                                  json={"name": f"load {secrets.token_hex(4)}",
                                        "owner_id": self.owner, "scopes": ["contacts:read"]})
            expected = (201,)
        self.latency["management"].append(time.monotonic() - sent)
        self.result.management += 1
        if self._check("management", r, expected) and r.status_code == 201:
            made = r.json()
            self.live[made["key"]] = made["id"]
            self.live_list.append(made["key"])

    async def revoke(self, client: httpx2.AsyncClient) -> None:
        if len(self.live_list) < 20:
            return
        secret = self.rng.choice(self.live_list)
        if secret in self.revoking:
            return
        self.revoking.add(secret)
        key_id = self.live[secret]
        sent = time.monotonic()
        r = await client.delete(f"{self.rng.choice(self.urls)}/v1/keys/{key_id}",
                                headers=self.management)
        self.latency["revoke"].append(time.monotonic() - sent)
        self.result.revocations += 1
        if self._check("revoke", r, (204,)):
            self.revoked[secret] = time.monotonic()
            self.revoked_list.append(secret)
            del self.live[secret]
            self.live_list.remove(secret)
        self.revoking.discard(secret)

    async def one(self, client: httpx2.AsyncClient) -> None:
        roll = self.rng.random()
        try:
            if roll < 0.95:
                await self.verify(client)
            elif roll < 0.99:
                await self.manage(client)
            else:
                await self.revoke(client)
        except httpx2.HTTPError as exc:
            self.result.transport_errors += 1
            self.result.wrong_answers.append(f"transport: {type(exc).__name__}: {exc}")
        self.result.requests += 1

    async def run(self, seconds: float, connections: int, on_warm: Any) -> None:
        limits = httpx2.Limits(max_connections=connections * len(self.urls),
                               max_keepalive_connections=connections * len(self.urls),
                               # below the server's 5 s idle keep-alive: a client that reuses a
                               # connection the server is closing gets a ReadError (one in
                               # 107,055 requests on a loaded machine, before this)
                               keepalive_expiry=2.0)
        warm_at = time.monotonic() + max(5.0, seconds / 5)
        deadline = time.monotonic() + seconds
        warmed = False
        async with httpx2.AsyncClient(limits=limits, timeout=30) as client:
            async def loop() -> None:
                nonlocal warmed
                while time.monotonic() < deadline:
                    await self.one(client)
                    if not warmed and time.monotonic() >= warm_at:
                        warmed = True
                        on_warm()

            await asyncio.gather(*(loop() for _ in range(connections)))


def run(seconds: float, *, connections: int = 16, bound: float = 1.0,
        tmp: Path | None = None) -> Result:
    """The whole run: a private schema, two workers on it and Redis, the load, the checks."""
    from tests.integration.procs import prepared_database, worker_env, workers
    from tests.support import REDIS_URL

    from keyplane.core.rights import SYSTEM

    tmp = tmp or Path(tempfile.mkdtemp(prefix="keyplane-mixed-"))
    result = Result(seconds=seconds, bound_seconds=bound)
    prefix = "kpmixed-" + secrets.token_hex(4)
    with prepared_database(tmp) as setup:
        tenant = setup.tenant
        live = {}
        for i in range(KEYS):
            issued = setup.kp.keys.create(SYSTEM, tenant.id, {
                "name": f"load {i}", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]})
            live[issued.secret] = issued.key.id
        env = worker_env(setup.url, setup.data_dir, redis_url=REDIS_URL, redis_prefix=prefix,
                         log_level="warning", usage_flush_seconds=5)
        with workers(env, tmp, 2) as running:
            for w in running:
                deadline = time.monotonic() + 10
                while w.readiness().get("invalidation") != "redis":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{w.name} never subscribed to Redis")
                    time.sleep(0.1)
            pids = {w.name: w.proc.pid for w in running if w.proc is not None}
            driver = Driver([w.url for w in running], tenant.management_key, setup.verifier,
                            tenant.admin_id, live, bound, result)

            def warm() -> None:
                for name, pid in pids.items():
                    result.rss_kb[name] = [rss_kb(pid)]

            started = time.monotonic()
            asyncio.run(driver.run(seconds, connections, warm))
            elapsed = time.monotonic() - started
            for name, pid in pids.items():
                result.rss_kb.setdefault(name, [rss_kb(pid)]).append(rss_kb(pid))
                warm_kb, end_kb = result.rss_kb[name][0], result.rss_kb[name][-1]
                result.rss_growth[name] = round((end_kb - warm_kb) / warm_kb, 4)
            result.throughput_rps = round(result.requests / elapsed, 1)
            result.latency_ms = {k: percentiles(v) for k, v in driver.latency.items()}
    result.max_valid_after_revoke_ms = round(result.max_valid_after_revoke_ms, 2)
    result.wrong_answers = result.wrong_answers[:20]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent requests per worker")
    parser.add_argument("--bound", type=float, default=1.0,
                        help="seconds after a revocation's answer from which the key must "
                             "never pass")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.seconds, connections=args.connections, bound=args.bound)
    if args.json:
        print(json.dumps({**asdict(result), "ok": result.ok}, indent=2))
    else:
        r = result
        print(f"{r.seconds:g} s, {r.requests} requests ({r.throughput_rps} req/s): "
              f"{r.verifications} verifications, {r.management} management, "
              f"{r.revocations} revocations")
        print(f"5xx: {r.server_errors}, transport errors: {r.transport_errors}, unexpected "
              f"4xx: {r.unexpected}, wrong answers: {len(r.wrong_answers)}")
        for kind, figures in r.latency_ms.items():
            print(f"  {kind:<10} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        print(f"largest revoked-but-VALID delay: {r.max_valid_after_revoke_ms} ms "
              f"(bound {r.bound_seconds} s)")
        for name, kb in r.rss_kb.items():
            print(f"  {name} RSS {kb[0]} kB after warm-up -> {kb[-1]} kB "
                  f"({r.rss_growth[name]:+.1%})")
        for wrong in r.wrong_answers:
            print("  WRONG:", wrong)
        print("OK" if r.ok else "FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
