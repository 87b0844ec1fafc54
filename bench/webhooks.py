"""Webhook delivery throughput and outbox lag under a burst.

A temporary Keyplane database (SQLite by default, ``--database-url`` for PostgreSQL), one tenant
with ``--endpoints`` webhooks to a receiver on a loopback port (in this process, threaded; it
checks every signature with the ``standardwebhooks`` library), and the delivery worker as its
own process, ``keyplane worker``, as in production. Events are real changes: each is a key
created through the key service, so its outbox rows are written in the key's transaction.

* **backlog**: ``--events`` events are written with no worker running; then the worker starts
  and drains them. Throughput = deliveries / (last arrival - first arrival).
* **burst**: with the worker running and idle, ``--events`` more are written by ``--writers``
  threads as fast as the database takes them. Lag = arrival at the receiver - the event's
  timestamp (taken in its transaction); p50/p99/max, and deliveries per second from the first
  write to the last arrival.

    .venv/bin/python bench/webhooks.py [--events 1000] [--endpoints 1] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from keyplane.bootstrap import Keyplane, build
from keyplane.config import Settings
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM

KEYPLANE = Path(sys.executable).with_name("keyplane")


class Receiver:
    """Records (webhook-id, arrival time) and whether the signature verified."""

    def __init__(self) -> None:
        self.secrets: dict[str, Webhook] = {}  # path -> verifier
        self.arrivals: list[tuple[str, float, float]] = []  # (id, arrival, event timestamp)
        self.invalid = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                arrived = time.time()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = receiver.secrets[self.path].verify(body, headers)
                    row = (headers["webhook-id"], arrived,
                           datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
                           .timestamp())
                    with receiver.lock:
                        receiver.arrivals.append(row)
                except (WebhookVerificationError, KeyError):
                    with receiver.lock:
                        receiver.invalid += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def take(self) -> list[tuple[str, float, float]]:
        with self.lock:
            out, self.arrivals = self.arrivals, []
        return out


def write_events(kp: Keyplane, tenant_id: str, owner_id: str, count: int,
                 writers: int) -> float:
    """``count`` key.created events from ``writers`` threads; returns the first write's time."""
    started = time.time()
    per = [count // writers + (1 if i < count % writers else 0) for i in range(writers)]

    def run(n: int, w: int) -> None:
        for i in range(n):
            kp.keys.create(SYSTEM, tenant_id, {"name": f"w{w}-{i}", "owner_id": owner_id})

    threads = [threading.Thread(target=run, args=(n, w)) for w, n in enumerate(per)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started


def wait_for(receiver: Receiver, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while receiver.count() < total:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {receiver.count()} of {total} deliveries arrived")
        time.sleep(0.01)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8, help="KEYPLANE_WEBHOOK_CONCURRENCY")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    url = args.database_url or f"sqlite:///{tmp / 'keyplane.db'}"
    settings = {"database_url": url, "data_dir": str(tmp / "data"),
                "webhook_allow_private_targets": "true",
                "webhook_concurrency": str(args.concurrency), "webhook_poll_seconds": "0.2",
                "log_level": "warning"}
    kp = build(Settings(**settings, webhook_worker=False), migrate_db=True)  # type: ignore[arg-type]
    kp.catalogue.seed()
    receiver = Receiver()
    tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})
    owner = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                 {"name": "bench"})
    for n in range(args.endpoints):
        issued = kp.webhooks.create(SYSTEM, tenant.id, {
            "url": f"http://127.0.0.1:{receiver.port}/e{n}", "events": ["key.created"]})
        receiver.secrets[f"/e{n}"] = Webhook(issued.secret)
    expected = args.events * args.endpoints
    env = {**os.environ, **{"KEYPLANE_" + k.upper(): v for k, v in settings.items()}}

    print(f"database: {'PostgreSQL' if url.startswith('postgres') else 'SQLite'}; "
          f"{args.events} events x {args.endpoints} endpoint(s); worker concurrency "
          f"{args.concurrency}; {args.writers} writer threads; cores: {os.cpu_count()}")

    # backlog: written first, drained by a worker started afterwards
    t0 = time.time()
    write_events(kp, tenant.id, owner.id, args.events, args.writers)
    wrote = time.time() - t0
    worker = subprocess.Popen([str(KEYPLANE), "worker"], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(receiver, expected, 300)
        backlog = receiver.take()
        first = min(a for _, a, _ in backlog)
        last = max(a for _, a, _ in backlog)
        print(f"events written: {args.events / wrote:,.0f}/s (each a key created, with its "
              "outbox rows, in one transaction)")
        print(f"backlog drain:  {len(backlog) / max(last - first, 1e-9):,.0f} deliveries/s "
              f"({len(backlog)} in {last - first:.2f} s)")

        # burst: the worker is running and idle; lag is arrival - event timestamp
        time.sleep(1.0)
        start = write_events(kp, tenant.id, owner.id, args.events, args.writers)
        wait_for(receiver, expected, 300)
        burst = receiver.take()
        lags = [(arrived - stamped) * 1000 for _, arrived, stamped in burst]
        end = max(a for _, a, _ in burst)
        print(f"burst:          {len(burst) / (end - start):,.0f} deliveries/s from the first "
              f"write to the last arrival ({end - start:.2f} s)")
        print(f"outbox lag:     p50 {statistics.median(lags):.0f} ms, p99 {pct(lags, 99):.0f} ms,"
              f" max {max(lags):.0f} ms (event committed -> received)")
        dupes = len(burst) + len(backlog) - len({i for i, _, _ in burst + backlog})
        print(f"signatures:     {receiver.invalid} invalid; {dupes} duplicate deliveries")
        print(json.dumps({"backlog_per_s": round(len(backlog) / (last - first)),
                          "burst_per_s": round(len(burst) / (end - start)),
                          "lag_p50_ms": round(statistics.median(lags)),
                          "lag_p99_ms": round(pct(lags, 99)), "invalid": receiver.invalid}))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        receiver.server.shutdown()
        kp.close()


if __name__ == "__main__":
    main()
