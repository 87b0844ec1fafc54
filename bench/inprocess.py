"""A cached in-process verification vs a bare ``hashlib.sha256`` + dict lookup loop.

Three loops over the same 200 keys, in the same process, interleaved over several rounds:

* baseline: ``table.get(hashlib.sha256(key.encode()).digest())``;
* server: ``Verifier.verify_cached(key, required={"contacts:read"}, ip=..., tls=True)`` on a
  warm cache (the path ``POST /v1/verify`` and the API's own authentication take on the event
  loop): checksum, cache lookup, every policy check, usage counting;
* SDK: ``KeyplaneMiddleware.verify_cached(key, ip, tls)``, the middleware's hit path (its cache
  was filled by real verifications against an in-process Keyplane; the key as the request's
  header carries it, in bytes), and, for information, a whole request through the middleware
  on a hit to an app that answers 204 (header parsing, client address, scope state, the app).

Targets (cost per verification): the SDK at most 2.5 times the baseline, the server at most 3.
Each loop is timed by the CPU time of this thread (``time.thread_time``), not the wall clock
(on a loaded machine that mostly measures the other processes), in short interleaved slices;
the ratio is the median of each slice's ratio to the baseline slice next to it, and the spread
printed is the middle 80 % of those.

    .venv/bin/python bench/inprocess.py [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2
from _common import arguments, report

TARGET = 2.5
TARGET_SERVER = 3.0
KEYS = 200


def _per_op(loop: Callable[[int], Any], n: int) -> float:
    started = time.thread_time()
    loop(n)
    return (time.thread_time() - started) / n


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "", http=False).parse_args(argv)
    rounds = 3 if args.quick else 7
    n = 50_000 if args.quick else 200_000

    import tempfile
    from pathlib import Path

    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM
    from keyplane.sdk import KeyplaneMiddleware
    from keyplane.web.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="keyplane-bench-"))
    kp = build(Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'kp.db'}",
                        usage_flush_seconds=3600), migrate_db=True)
    kp.start()
    tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})
    admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                 {"email": "bench@example.com", "role": "admin"})
    keys = [kp.keys.create(SYSTEM, tenant.id, {"name": f"k{i}", "owner_id": admin.id,
                                                "scopes": ["contacts:write"]}).secret
            for i in range(KEYS)]
    verifier_key = kp.keys.create(SYSTEM, None, {"name": "v", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret

    # -- baseline -----------------------------------------------------------------------------
    table = {hashlib.sha256(k.encode()).digest(): i for i, k in enumerate(keys)}
    sha256 = hashlib.sha256

    def baseline(n: int) -> None:
        ks, get = keys, table.get
        m = len(ks)
        for i in range(n):
            if get(sha256(ks[i % m].encode()).digest()) is None:
                raise AssertionError

    # -- the server's hit path ----------------------------------------------------------------
    verifier = kp.verifier
    required = frozenset({"contacts:read"})
    ip = ipaddress.ip_address("203.0.113.5")
    for k in keys:
        assert verifier.verify(k, required=required, ip=ip, tls=True).valid

    def server(n: int) -> None:
        ks, verify = keys, verifier.verify_cached
        m = len(ks)
        for i in range(n):
            v = verify(ks[i % m], required=required, ip=ip, tls=True)
            if v is None or not v.valid:
                raise AssertionError

    # -- the SDK's hit path -------------------------------------------------------------------
    async def product(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    in_process = httpx2.ASGITransport(app=create_app(kp, manage_lifecycle=False))
    mw = KeyplaneMiddleware(product, url="http://keyplane.internal", token=verifier_key,
                            changes="off", cache_ttl=3600, cache_size=10_000,
                            transport=in_process)

    async def fill() -> None:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=mw),
                                      base_url="https://product") as client:
            for k in keys:
                r = await client.get("/", headers={"Authorization": f"Bearer {k}"})
                assert r.status_code == 204, r.text

    asyncio.run(fill())
    sdk_ip, sdk_tls = "127.0.0.1", True  # what ASGITransport reports for https://

    key_bytes = [k.encode() for k in keys]  # what the header carries

    def sdk(n: int) -> None:
        ks, verify = key_bytes, mw.verify_cached
        m = len(ks)
        for i in range(n):
            if verify(ks[i % m], sdk_ip, sdk_tls) is None:
                raise AssertionError

    scopes = [{"type": "http", "path": "/", "scheme": "https", "client": ("127.0.0.1", 5000),
               "headers": [(b"host", b"product"), (b"user-agent", b"wrk"),
                           (b"authorization", f"Bearer {k}".encode())]} for k in keys]

    async def receive() -> Any:
        raise AssertionError("the product reads no body")

    async def swallow(message: Any) -> None:
        pass

    def sdk_request(n: int) -> None:
        # a hit never suspends: each request runs to its end in one step of its coroutine,
        # without an event loop (a miss would wait for Keyplane, and is an error here)
        ss, call = scopes, mw
        m = len(ss)
        for i in range(n):
            coro = call(dict(ss[i % m]), receive, swallow)
            try:
                coro.send(None)
            except StopIteration:
                continue
            coro.close()
            raise AssertionError("a cache miss")

    loops = {"baseline": baseline, "server": server, "sdk": sdk, "sdk_request": sdk_request}
    for loop in loops.values():  # warm up
        loop(2_000)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds * 10):  # short slices, interleaved: neighbours share the same load
        for name, loop in loops.items():
            times[name].append(_per_op(loop, n // 10))
    kp.close()

    base = min(times["baseline"])
    rows = []
    labels = {
        "server": "server Verifier.verify_cached hit / sha256+dict",
        "sdk": "SDK middleware verify_cached hit / sha256+dict",
        "sdk_request": "SDK whole per-request hit work / sha256+dict (info)",
    }
    for name, label in labels.items():
        per_round = sorted(t / b for t, b in zip(times[name], times["baseline"], strict=True))
        ratio = statistics.median(per_round)  # of the slices' ratios, each to its neighbour
        rows.append({
            "metric": label, "ratio": ratio, "min": per_round[len(per_round) // 10],
            "max": per_round[-1 - len(per_round) // 10],  # the middle 80 %
            "target": "-" if name == "sdk_request" else
            f"<= {TARGET_SERVER if name == 'server' else TARGET}",
            "ok": None if name == "sdk_request" else
            ratio <= (TARGET_SERVER if name == "server" else TARGET),
            "detail": f"best slice {min(times[name]) * 1e9:.0f} ns vs {base * 1e9:.0f} ns "
                      f"(medians {statistics.median(times[name]) * 1e9:.0f} ns vs "
                      f"{statistics.median(times['baseline']) * 1e9:.0f} ns)",
        })
    report("inprocess", rows, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
