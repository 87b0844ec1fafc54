"""POST /v1/verify on one uvicorn worker vs a bare ASGI hello-world on the same server.

Both are served by uvicorn (one worker, httptools, uvloop) and loaded by the same generator
(wrk if installed, else bench/_load.py) in interleaved rounds. The verify calls present a valid
key with a required scope, a client address and TLS, so every answer is a full VALID verdict
(from Keyplane's verification cache, as in production). Target: at least 0.5.

For information, two more Keyplanes are measured in the same rounds: one with the answer cache
off (``KEYPLANE_VERIFY_ANSWER_CACHE_SIZE=0``: every request re-runs both verifications from
the snapshot cache) and one with the access log on (``KEYPLANE_LOG_LEVEL=info``; the measured
ones run at ``warning``, as the hello-world logs nothing either).

    .venv/bin/python bench/verify_http.py [--quick] [--json] [--tool wrk|python]
"""

from __future__ import annotations

import json
import sys

import httpx2
from _common import (
    Target,
    arguments,
    compare,
    keyplane_fixture,
    report,
    spread,
    tool_name,
    uvicorn,
)

TARGET = 0.5


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    tool = tool_name(args.tool)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 8.0)
    with keyplane_fixture() as fx, \
            uvicorn("keyplane.web.asgi:app_factory", factory=True, env=fx.env,
                    health="/healthz") as kp, \
            uvicorn("keyplane.web.asgi:app_factory", factory=True,
                    env={**fx.env, "KEYPLANE_VERIFY_ANSWER_CACHE_SIZE": "0"},
                    health="/healthz") as uncached, \
            uvicorn("keyplane.web.asgi:app_factory", factory=True,
                    env={**fx.env, "KEYPLANE_LOG_LEVEL": "info"},
                    health="/healthz") as logged, \
            uvicorn("_apps:hello") as hello:
        body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"],
                           "ip": "203.0.113.5", "tls": True}).encode()
        headers = {"Authorization": f"Bearer {fx.verifier_key}",
                   "Content-Type": "application/json"}
        answer = httpx2.post(kp.url + "/v1/verify", content=body, headers=headers).json()
        if answer.get("code") != "VALID":
            print(f"verify does not answer VALID: {answer}", file=sys.stderr)
            return 1
        verify = Target("verify", kp.url + "/v1/verify", "POST", body, headers)
        baseline = Target("hello", hello.url + "/")
        others = [Target("uncached", uncached.url + "/v1/verify", "POST", body, headers),
                  Target("logged", logged.url + "/v1/verify", "POST", body, headers)]
        result = compare([baseline, verify, *others], "hello", tool=tool, rounds=rounds,
                         duration=duration, connections=args.connections,
                         progress=None if args.json else lambda m: print(" ", m,
                                                                          file=sys.stderr))
    ratios = result.ratios("verify")
    s = spread(ratios)
    rows = [{
        "metric": "POST /v1/verify rps / bare ASGI hello-world rps",
        "ratio": s["median"], "min": s["min"], "max": s["max"], "target": f">= {TARGET}",
        "ok": s["median"] >= TARGET,
        "detail": (f"verify {spread(result.rates['verify'])['median']:.0f} req/s, hello "
                   f"{spread(result.rates['hello'])['median']:.0f} req/s; tool {tool}, "
                   f"{rounds}x{duration:.0f}s, {args.connections} connections; errors "
                   f"{result.errors}"),
    }]
    for name, label in (("uncached", "  the same, answer cache off (info)"),
                        ("logged", "  the same, access log on (info)")):
        o = spread(result.ratios(name))
        rows.append({"metric": label, "ratio": o["median"], "min": o["min"], "max": o["max"],
                     "target": "-", "ok": None,
                     "detail": f"{spread(result.rates[name])['median']:.0f} req/s"})
    report("verify_http", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
