"""POST /v1/verify, served exactly as ``keyplane serve`` runs it, vs the fastest bare ASGI server.

The baseline is a bare ASGI hello-world (``_apps:hello``) on one uvicorn worker (httptools,
uvloop) AND on one granian worker, both measured in every round: each round's baseline is the
faster of the two (they trade places from run to run). Against it, in the same interleaved
rounds and with the same load generator (wrk if installed, else bench/_load.py):

* ``verify``: ``keyplane serve`` with its defaults (one worker, JSON log lines at ``info`` with
  the access log, written to a file), SQLite; every call presents a valid verifier key and a
  valid key with a required scope, a client address and TLS, so every answer is a full VALID
  verdict (from Keyplane's caches, as in production). Target: at least 0.5 of the baseline.
* for information (``--info``): the same app on one granian worker (the server choice), with
  the access log off, and with the answer cache off (every request re-runs both
  verifications from the snapshot cache).

Each rate ratio is printed with its spread over the rounds, the machine's load average, and
the ratio of server CPU time per request (baseline ÷ Keyplane, each server's process tree):
steadier than rates on a loaded machine, but it cannot see that granian spreads a request
over two threads (its I/O runs in Rust beside the Python thread), so the rate ratio decides.

    .venv/bin/python bench/verify_http.py [--quick] [--info] [--json] [--tool wrk|python]
"""

from __future__ import annotations

import contextlib
import json
import sys

import httpx2
from _common import (
    Target,
    arguments,
    compare,
    granian,
    have_granian,
    keyplane_fixture,
    keyplane_serve,
    report,
    spread,
    tool_name,
    uvicorn,
)

TARGET = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__ or "")
    parser.add_argument("--info", action="store_true",
                        help="also Keyplane on granian, access log off, answer cache off")
    args = parser.parse_args(argv)
    tool = tool_name(args.tool)
    rounds = args.rounds or (3 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 6.0)
    if not have_granian():
        print("granian is not installed (pip install -e '.[bench]'): the baseline would not "
              "be at its best", file=sys.stderr)
        return 2
    with keyplane_fixture() as fx, contextlib.ExitStack() as servers:
        body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"],
                           "ip": "203.0.113.5", "tls": True}).encode()
        headers = {"Authorization": f"Bearer {fx.verifier_key}",
                   "Content-Type": "application/json"}
        hello_uv = servers.enter_context(uvicorn("_apps:hello"))
        hello_gr = servers.enter_context(granian("_apps:hello"))
        kps = {"verify": servers.enter_context(keyplane_serve(fx.env))}
        if args.info:
            kps["granian"] = servers.enter_context(granian(
                "keyplane.web.asgi:app_factory", factory=True, env=fx.env, health="/healthz"))
            kps["no access log"] = servers.enter_context(keyplane_serve(
                {**fx.env, "KEYPLANE_ACCESS_LOG": "false"}))
            kps["uncached"] = servers.enter_context(keyplane_serve(
                {**fx.env, "KEYPLANE_VERIFY_ANSWER_CACHE_SIZE": "0"}))
        targets = [Target("hello uvicorn", hello_uv.url + "/", pid=hello_uv.process.pid),
                   Target("hello granian", hello_gr.url + "/", pid=hello_gr.process.pid)]
        for name, kp in kps.items():
            answer = httpx2.post(kp.url + "/v1/verify", content=body, headers=headers).json()
            if answer.get("code") != "VALID":
                print(f"{name}: verify does not answer VALID: {answer}", file=sys.stderr)
                return 1
            targets.append(Target(name, kp.url + "/v1/verify", "POST", body, headers,
                                  pid=kp.process.pid))
        result = compare(targets, "hello", tool=tool, rounds=rounds, duration=duration,
                         connections=args.connections,
                         progress=None if args.json else lambda m: print(" ", m,
                                                                         file=sys.stderr))
    result.best_of("hello", ["hello uvicorn", "hello granian"])
    rates = {name: spread(r)["median"] for name, r in result.rates.items()}
    cpu = {name: spread(c)["median"] * 1e6 for name, c in result.cpu.items()}
    wins = sum(u > g for u, g in zip(result.rates["hello uvicorn"],
                                     result.rates["hello granian"], strict=True))
    load = spread(result.loads)
    rows = []
    for name in kps:
        s = spread(result.ratios(name))
        c = spread(result.cpu_ratios(name)) if result.cpu_ratios(name) else None
        main_row = name == "verify"
        rows.append({
            "metric": ("POST /v1/verify (keyplane serve) / best bare ASGI server" if main_row
                       else f"  the same app, {name} (info)"),
            "ratio": s["median"], "min": s["min"], "max": s["max"],
            "target": f">= {TARGET}" if main_row else "-",
            "ok": s["median"] >= TARGET if main_row else None,
            "detail": (f"{rates[name]:.0f} req/s vs hello {rates['hello']:.0f} (uvicorn "
                       f"{rates['hello uvicorn']:.0f}, granian {rates['hello granian']:.0f}; "
                       f"uvicorn faster in {wins}/{rounds} rounds)"
                       + (f"; server CPU per request {cpu[name]:.1f} us vs hello "
                          f"{cpu['hello']:.1f} us: CPU ratio {c['median']:.2f} "
                          f"({c['min']:.2f}-{c['max']:.2f})" if c and name in cpu else "")
                       + (f"; tool {tool}, {rounds}x{duration:.0f}s, {args.connections} "
                          f"connections, load average {load['min']:.1f}-{load['max']:.1f}; "
                          f"errors {result.errors[name]}" if main_row else "")),
        })
    report("verify_http", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
