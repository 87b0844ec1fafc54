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

import contextlib
import json
import sys

import httpx2
from _common import (
    Comparison,
    Fixture,
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


def measure_verify(fx: Fixture, variants: dict[str, dict[str, str]], *, tool: str,
                   rounds: int, duration: float, connections: int,
                   quiet: bool) -> Comparison | None:
    """Each variant (a name and extra settings) on its own Keyplane worker against the
    hello-world, in interleaved rounds; only these servers run meanwhile."""
    body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"],
                       "ip": "203.0.113.5", "tls": True}).encode()
    headers = {"Authorization": f"Bearer {fx.verifier_key}", "Content-Type": "application/json"}
    with contextlib.ExitStack() as servers:
        hello = servers.enter_context(uvicorn("_apps:hello"))
        targets = [Target("hello", hello.url + "/")]
        for name, extra in variants.items():
            kp = servers.enter_context(uvicorn("keyplane.web.asgi:app_factory", factory=True,
                                               env={**fx.env, **extra}, health="/healthz"))
            answer = httpx2.post(kp.url + "/v1/verify", content=body, headers=headers).json()
            if answer.get("code") != "VALID":
                print(f"verify does not answer VALID: {answer}", file=sys.stderr)
                return None
            targets.append(Target(name, kp.url + "/v1/verify", "POST", body, headers))
        return compare(targets, "hello", tool=tool, rounds=rounds, duration=duration,
                       connections=connections,
                       progress=None if quiet else lambda m: print(" ", m, file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    tool = tool_name(args.tool)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 8.0)
    options = {"tool": tool, "rounds": rounds, "duration": duration,
               "connections": args.connections, "quiet": args.json}
    with keyplane_fixture() as fx:
        result = measure_verify(fx, {"verify": {}}, **options)  # type: ignore[arg-type]
        info = measure_verify(fx, {  # type: ignore[arg-type]
            "uncached": {"KEYPLANE_VERIFY_ANSWER_CACHE_SIZE": "0"},
            "logged": {"KEYPLANE_LOG_LEVEL": "info"}}, **options)
    if result is None or info is None:
        return 1
    s = spread(result.ratios("verify"))
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
        o = spread(info.ratios(name))
        rows.append({"metric": label, "ratio": o["median"], "min": o["min"], "max": o["max"],
                     "target": "-", "ok": None,
                     "detail": f"{spread(info.rates[name])['median']:.0f} req/s, hello "
                               f"{spread(info.rates['hello'])['median']:.0f} req/s; errors "
                               f"{info.errors[name]}"})
    report("verify_http", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) and not any(info.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
