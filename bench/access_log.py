"""What the access log costs ``POST /v1/verify``: ``keyplane serve`` as it runs by default (one
worker, httptools, JSON logs at ``info``, the access log on, written to a file as a process
manager would collect it) against the same server with ``KEYPLANE_ACCESS_LOG=false``, and the
``text`` format for information. wrk drives each in interleaved rounds on one SQLite Keyplane;
the ratio is the median over rounds of on ÷ off in requests per second. On a shared machine
the rounds vary more than the effect, so the figure with the target is the steadier one (as in
``bench/metrics_cost.py``): the work the access log adds to one request (``log_request`` with
the writer on minus off, timed with ``timeit``, best of 7, flushes to a file included) as a share
of one request's time at the measured "off" throughput (one worker: 1 / req/s). Target: the
access log costs at most 10 %.

    .venv/bin/python bench/access_log.py [--quick] [--rounds N] [--duration S] [--json]
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
from _common import (
    PYTHON,
    Target,
    arguments,
    compare,
    free_port,
    keyplane_fixture,
    report,
    spread,
    tool_name,
)

TARGET = 0.90
KEYPLANE = str(Path(PYTHON).parent / "keyplane")


@contextlib.contextmanager
def serve(env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="bench-access-", suffix=".log")[1])
    full = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    full.update(env)
    with log.open("wb") as out:
        proc = subprocess.Popen([KEYPLANE, "serve", "--port", str(port), "--no-migrate"],
                                env=full, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:])
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("keyplane serve did not answer in time")
            time.sleep(0.1)
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.unlink(missing_ok=True)


def added_seconds() -> float:
    """What one access-log line adds to ``log_request`` on the verify path (JSON, to a file)."""
    import logging
    import timeit

    from keyplane import logs
    from keyplane.web.middleware import log_request

    scope = {"type": "http", "method": "POST", "path": "/v1/verify",
             "client": ("127.0.0.1", 50000)}
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "access.log", "w") as out:
        handler = logging.StreamHandler(out)
        n = 50_000

        def best() -> float:
            return min(timeit.repeat(
                lambda: log_request(scope, 200, time.perf_counter(), "0123456789abcdef"),
                number=n, repeat=7)) / n

        logging.getLogger("keyplane.access").setLevel(logging.WARNING)
        off = best()
        logs.access_writer = logs.AccessWriter(handler, json_lines=True)
        try:
            on = best()
        finally:
            logs.access_writer.close()
            logs.access_writer = None
    return on - off


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    tool = tool_name(args.tool)
    rounds = args.rounds or (3 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 8.0)
    with keyplane_fixture() as fx:
        base = {**fx.env, "KEYPLANE_LOG_LEVEL": "info"}
        body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"]}).encode()
        headers = {"Authorization": f"Bearer {fx.verifier_key}",
                   "Content-Type": "application/json"}
        with serve({**base, "KEYPLANE_ACCESS_LOG": "true"}) as (on, on_log), \
                serve({**base, "KEYPLANE_ACCESS_LOG": "false"}) as (off, off_log), \
                serve({**base, "KEYPLANE_LOG_FORMAT": "text"}) as (text, _):
            targets = [Target(name, url + "/v1/verify", "POST", body, headers)
                       for name, url in (("off", off), ("json", on), ("text", text))]
            result = compare(targets, "off", tool=tool, rounds=rounds, duration=duration,
                             connections=args.connections)
            lines_on = sum(1 for line in on_log.read_text().splitlines()
                           if '"keyplane.access"' in line)
            lines_off = sum(1 for line in off_log.read_text().splitlines()
                            if '"keyplane.access"' in line)
    added = added_seconds()
    per_request = 1 / spread(result.rates["off"])["median"]
    share = added / per_request
    json_ratio = spread(result.ratios("json"))
    text_ratio = spread(result.ratios("text"))
    rows = [
        {"metric": "work the access log adds ÷ one verify request's time", "ratio": share,
         "min": share, "max": share, "target": f"<= {1 - TARGET:.2f}", "ok": share <= 1 - TARGET,
         "detail": f"{added * 1e6:.2f} µs per line against {per_request * 1e6:.1f} µs per "
                   "request"},
        {"metric": "access log on (json, default) / off, POST /v1/verify req/s (wrk)",
         "ratio": json_ratio["median"], "min": json_ratio["min"], "max": json_ratio["max"],
         "target": "information", "ok": None,
         "detail": f"off {spread(result.rates['off'])['median']:.0f} req/s, on "
                   f"{spread(result.rates['json'])['median']:.0f} req/s; {lines_on} access "
                   f"lines written (off: {lines_off})"},
        {"metric": "access log on (text) / off", "ratio": text_ratio["median"],
         "min": text_ratio["min"], "max": text_ratio["max"], "target": "information",
         "ok": None, "detail": f"text {spread(result.rates['text'])['median']:.0f} req/s"},
    ]
    errors = sum(result.errors.values())
    report("access log cost (keyplane serve defaults, wrk)", rows, as_json=args.json,
           extra={"errors": errors, "rounds": rounds, "duration": duration, "tool": tool})
    return 0 if share <= 1 - TARGET and not errors and lines_on > 0 and lines_off == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
