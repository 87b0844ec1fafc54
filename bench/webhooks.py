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
import socket
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


def serve_receiver(port: int, secrets_path: str, out_path: str) -> None:
    """The receiver process: verifies each request and appends ``id arrival stamp`` (or
    ``invalid``) to ``out_path``, one line per delivery."""
    verifiers = {path: Webhook(secret)
                 for path, secret in json.loads(Path(secrets_path).read_text()).items()}
    out = open(out_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            arrived = time.time()
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload = verifiers[self.path].verify(body, headers)
                stamp = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
                line = f"{headers['webhook-id']} {arrived} {stamp.timestamp()}\n"
            except (WebhookVerificationError, KeyError):
                line = "invalid\n"
            with lock:
                out.write(line)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


class Receiver:
    """The receiver, in its own process so it does not share a GIL with the writers."""

    def __init__(self, tmp: Path, secrets: dict[str, str], port: int) -> None:
        self.port = port
        (tmp / "secrets.json").write_text(json.dumps(secrets))
        self.out = tmp / "arrivals.txt"
        self.out.touch()
        self.seen = 0
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-receiver", str(self.port),
             str(tmp / "secrets.json"), str(self.out)])
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the receiver did not start")
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return [line for line in self.out.read_text().splitlines() if line]

    def count(self) -> int:
        return len(self.lines()) - self.seen

    def take(self) -> tuple[list[tuple[str, float, float]], int]:
        """The deliveries since the last take, and how many failed verification."""
        lines = self.lines()
        fresh, self.seen = lines[self.seen:], len(lines)
        rows = [(i, float(a), float(t)) for i, a, t in
                (line.split() for line in fresh if line != "invalid")]
        return rows, sum(1 for line in fresh if line == "invalid")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


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
    tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})
    owner = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                 {"name": "bench"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secrets = {}
    for n in range(args.endpoints):
        issued = kp.webhooks.create(SYSTEM, tenant.id, {
            "url": f"http://127.0.0.1:{port}/e{n}", "events": ["key.created"]})
        secrets[f"/e{n}"] = issued.secret
    receiver = Receiver(tmp, secrets, port)
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
        backlog, invalid = receiver.take()
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
        burst, more_invalid = receiver.take()
        invalid += more_invalid
        lags = [(arrived - stamped) * 1000 for _, arrived, stamped in burst]
        end = max(a for _, a, _ in burst)
        print(f"burst:          {len(burst) / (end - start):,.0f} deliveries/s from the first "
              f"write to the last arrival ({end - start:.2f} s)")
        print(f"outbox lag:     p50 {statistics.median(lags):.0f} ms, p99 {pct(lags, 99):.0f} ms,"
              f" max {max(lags):.0f} ms (event committed -> received)")
        dupes = len(burst) + len(backlog) - len({i for i, _, _ in burst + backlog})
        print(f"signatures:     {invalid} invalid; {dupes} duplicate deliveries")
        print(json.dumps({"backlog_per_s": round(len(backlog) / (last - first)),
                          "burst_per_s": round(len(burst) / (end - start)),
                          "lag_p50_ms": round(statistics.median(lags)),
                          "lag_p99_ms": round(pct(lags, 99)), "invalid": invalid}))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        receiver.stop()
        kp.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-receiver"]:
        serve_receiver(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
