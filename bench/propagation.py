"""How fast a revocation reaches another worker: revoke on worker A, then ask worker B (which
has the key cached) until it refuses; the time from A's answer to B's first refusal.

Two real ``keyplane serve`` processes share a private PostgreSQL schema (dropped afterwards),
once per way of hearing of changes:

* ``poll``: no Redis, ``KEYPLANE_CHANGE_NOTIFY=false``: the change-log poll every 0.5 s alone
  (what a worker without Redis did before LISTEN/NOTIFY);
* ``notify``: no Redis, PostgreSQL ``LISTEN``/``NOTIFY`` (the default without Redis);
* ``redis``: Redis pub/sub (``KEYPLANE_REDIS_URL`` set, a unique channel prefix).

Everything else is the default configuration. The three pairs run at once and take turns, one
revocation each per round, so that a busy moment of a shared machine weighs on each alike. It
also times one read of the change log (what a
notified worker does before it drops the entry: the notification carries only the position).

    .venv/bin/python bench/propagation.py [--revocations 200] [--modes poll,notify,redis] [--json]

Environment: KEYPLANE_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test),
KEYPLANE_TEST_REDIS_URL (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class Pair:
    """Two workers on one private schema, hearing of changes one way."""

    mode: str
    setup: Any
    a: Any
    b: Any
    keys: list[Any]
    times: list[float] = field(default_factory=list)


@contextlib.contextmanager
def pair(mode: str, revocations: int, tmp: Path) -> Iterator[Pair]:
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
                w.wait_ready(180)  # a busy shared machine: imports alone may take 20 s
                wait_until(lambda w=w: w.readiness()["invalidation"] == expected, 10)
            yield Pair(mode, setup, a, b, keys)
        finally:
            for w in (a, b):
                w.kill()


def revoke_once(p: Pair, issued: Any, client: httpx2.Client) -> float:
    """Milliseconds from a's answer to the revocation to b's first refusal."""
    manage = {"Authorization": f"Bearer {p.setup.tenant.management_key}"}
    check = {"Authorization": f"Bearer {p.setup.verifier}"}

    def code() -> str:
        r = client.post(p.b.url + "/v1/verify", json={"key": issued.secret}, headers=check)
        assert r.status_code == 200, r.text
        return str(r.json()["code"])

    assert code() == "VALID"  # cached on b
    time.sleep(0.01)  # b idle, as between a product's requests
    r = client.delete(f"{p.a.url}/v1/keys/{issued.key.id}", headers=manage)
    assert r.status_code == 204, r.text
    start = time.perf_counter()
    while code() == "VALID":
        if time.perf_counter() - start > 10:
            raise RuntimeError(f"{p.mode}: b accepted a revoked key for 10 s")
    return (time.perf_counter() - start) * 1000


def log_read_ms(p: Pair) -> float:
    source = p.setup.kp.feed.source
    head = source.head()
    reads = []
    for _ in range(200):
        started = time.perf_counter()
        source.read(head - 1, 1000)
        reads.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(reads), 2)


def run(modes: list[str], revocations: int) -> list[dict[str, Any]]:
    """Every mode's pair runs at once and the revocations take turns (one per mode per round),
    so that a busy moment of this shared machine weighs on every mode alike."""
    tmp = Path(tempfile.mkdtemp(prefix="keyplane-propagation-"))
    with contextlib.ExitStack() as stack, httpx2.Client(timeout=10) as client:
        pairs = [stack.enter_context(pair(mode, revocations, tmp)) for mode in modes]
        for i in range(revocations):
            for p in pairs:
                p.times.append(revoke_once(p, p.keys[i], client))
        return [{"mode": p.mode, **figures(p.times), "log_read_median_ms": log_read_ms(p)}
                for p in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--modes", default="poll,notify,redis")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.modes.split(","), args.revocations)
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
