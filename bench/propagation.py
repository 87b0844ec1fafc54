"""How fast a revocation reaches another worker: revoke on worker A, then ask worker B (which
has the key cached) until it refuses; the time from A's answer to B's first refusal.

Two real ``keyplane serve`` processes share a private PostgreSQL schema (dropped afterwards),
once per way of hearing of changes:

* ``poll``: no Redis, ``KEYPLANE_CHANGE_NOTIFY=false``: the change-log poll every 0.5 s alone
  (what a worker without Redis did before LISTEN/NOTIFY);
* ``notify``: no Redis, PostgreSQL ``LISTEN``/``NOTIFY`` (the default without Redis);
* ``redis``: Redis pub/sub (``KEYPLANE_REDIS_URL`` set, a unique channel prefix).

Everything else is the default configuration. It also times one read of the change log (what a
notified worker does before it drops the entry: the notification carries only the position).

    .venv/bin/python bench/propagation.py [--revocations 200] [--modes poll,notify,redis] [--json]

Environment: KEYPLANE_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test),
KEYPLANE_TEST_REDIS_URL (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "poll": {"change_notify": "false"},
    "notify": {},
    "redis": {"redis_url": None},  # filled with KEYPLANE_TEST_REDIS_URL
}


def figures(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p99_ms": round(p99, 2), "max_ms": round(ordered[-1], 2)}


def serve(env: dict[str, str], log: Path, name: str) -> Any:
    """``keyplane serve`` on a free port, as an operator runs it (one worker per process)."""
    from tests.integration.procs import Worker

    class Served(Worker):
        def spawn(self) -> Served:
            with self.log_path.open("ab") as out:
                self.proc = subprocess.Popen(
                    [str(Path(sys.executable).parent / "keyplane"), "serve", "--host",
                     "127.0.0.1", "--port", str(self.port), "--no-migrate"],
                    env=self.env, stdout=out, stderr=subprocess.STDOUT)
            return self

    return Served(env, log, name)


def measure(mode: str, revocations: int, tmp: Path) -> dict[str, Any]:
    from tests.integration.procs import prepared_database, wait_until, worker_env
    from tests.support import REDIS_URL

    from keyplane.core.rights import SYSTEM

    settings = dict(MODES[mode])
    if "redis_url" in settings:
        settings.update(redis_url=REDIS_URL, redis_prefix="kpprop-" + secrets.token_hex(4))
    expected = {"poll": "polling"}.get(mode, mode)
    with prepared_database(tmp / mode) as setup:
        tenant = setup.tenant
        keys = [setup.kp.keys.create(SYSTEM, tenant.id, {
            "name": f"p{i}", "owner_id": tenant.admin_id, "scopes": ["contacts:read"],
            "require_tls": False}) for i in range(revocations)]
        env = worker_env(setup.url, setup.data_dir, log_level="warning", **settings)
        a, b = (serve(env, tmp, f"{mode}-{n}") for n in "ab")
        try:
            for w in (a, b):
                w.spawn()
            for w in (a, b):
                w.wait_ready()
                wait_until(lambda w=w: w.readiness()["invalidation"] == expected, 10)
            manage = {"Authorization": f"Bearer {tenant.management_key}"}
            check = {"Authorization": f"Bearer {setup.verifier}"}
            times: list[float] = []
            with httpx2.Client(timeout=10) as client:
                def code(key: str) -> str:
                    r = client.post(b.url + "/v1/verify", json={"key": key}, headers=check)
                    assert r.status_code == 200, r.text
                    return str(r.json()["code"])

                for issued in keys:
                    assert code(issued.secret) == "VALID"  # cached on b
                    time.sleep(0.01)  # b idle, as between a product's requests
                    r = client.delete(f"{a.url}/v1/keys/{issued.key.id}", headers=manage)
                    assert r.status_code == 204, r.text
                    start = time.perf_counter()
                    while code(issued.secret) == "VALID":
                        if time.perf_counter() - start > 10:
                            raise RuntimeError(f"{mode}: b accepted a revoked key for 10 s")
                    times.append((time.perf_counter() - start) * 1000)
            reads = []
            source, head = setup.kp.feed.source, setup.kp.feed.source.head()
            for _ in range(200):
                started = time.perf_counter()
                source.read(head - 1, 1000)
                reads.append((time.perf_counter() - started) * 1000)
        finally:
            for w in (a, b):
                w.kill()
    return {"mode": mode, **figures(times), "log_read_median_ms":
            round(statistics.median(reads), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--modes", default="poll,notify,redis")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="keyplane-propagation-"))
    results = [measure(mode, args.revocations, tmp) for mode in args.modes.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("revoke on worker A -> refused on worker B (two `keyplane serve` processes, "
              "PostgreSQL)")
        print(f"{'mode':<8} {'n':>5} {'median':>9} {'p99':>9} {'max':>9}  log read")
        for r in results:
            print(f"{r['mode']:<8} {r['n']:>5} {r['median_ms']:>7.1f}ms {r['p99_ms']:>7.1f}ms "
                  f"{r['max_ms']:>7.1f}ms  {r['log_read_median_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
