"""A route behind KeyplaneMiddleware (warm cache) vs the same route without it.

The same Starlette app is served twice by uvicorn (one worker each); the protected copy verifies
every request's key with a real Keyplane (served alongside) and, once warm, answers from its
verdict cache while following the change stream. Both copies get the same requests (with the
key). Target: at least 0.85 (issue 10), by request rates; the servers' CPU time per request is
printed too (the ratio of the plain route's to the protected one's: what the middleware costs).

With two CPUs or more, both copies run on one CPU of their own (the last one) and the load
generators and Keyplane on the others, as a product's API server and its clients would be. In
each round both copies are loaded *at the same time*, each by its own load generator: the
kernel gives each half of the CPU, so the ratio of their rates is the ratio of their costs per
request, and a change in the machine's speed during the run reaches both alike. Measured one
after the other (``--apart``: each copy alone on the CPU in turn, interleaved rounds), this
machine's speed drifted by up to 50 % between the two 8-second runs of a round, and the rounds'
ratios spread over 0.70-1.04 (full runs: 0.77-0.90) where side by side they spread over
0.87-0.89. ``--no-pin`` measures unpinned, one after the other (on a two-core machine the
server and wrk then meet on one core in some rounds and not in others).

    .venv/bin/python bench/middleware.py [--quick] [--json] [--tool wrk|python] [--apart]
"""

from __future__ import annotations

import sys

import httpx2
from _common import (
    Target,
    arguments,
    compare,
    keyplane_fixture,
    pin,
    report,
    split_cpus,
    spread,
    tool_name,
    uvicorn,
)

TARGET = 0.85


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__ or "")
    parser.add_argument("--no-pin", action="store_true",
                        help="leave the servers and the load generator on any CPU")
    parser.add_argument("--apart", action="store_true",
                        help="load the two copies one after the other, not side by side")
    args = parser.parse_args(argv)
    cpus = None if args.no_pin else split_cpus()
    together = cpus is not None and not args.apart
    tool = tool_name(args.tool)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 8.0)
    with keyplane_fixture() as fx, \
            uvicorn("keyplane.web.asgi:app_factory", factory=True, env=fx.env,
                    health="/healthz") as kp, \
            uvicorn("_apps:product", factory=True) as plain, \
            uvicorn("_apps:protected", factory=True,
                    env={"BENCH_KEYPLANE_URL": kp.url,
                         "BENCH_VERIFIER_KEY": fx.verifier_key}) as guarded:
        headers = {"Authorization": f"Bearer {fx.data_key}"}
        if cpus is not None:
            load_cpus, server_cpu = cpus
            pin(kp.process.pid, load_cpus)
            for server in (plain, guarded):
                pin(server.process.pid, server_cpu)
        for server in (plain, guarded):
            r = httpx2.get(server.url + "/contacts", headers=headers)
            if r.status_code != 200:
                print(f"{server.url} answers {r.status_code}: {r.text}", file=sys.stderr)
                return 1
        if httpx2.get(guarded.url + "/contacts").status_code != 401:
            print("the protected app does not refuse a missing key", file=sys.stderr)
            return 1
        result = compare(
            [Target("plain", plain.url + "/contacts", headers=headers, pid=plain.process.pid),
             Target("protected", guarded.url + "/contacts", headers=headers,
                    pid=guarded.process.pid)],
            "plain", tool=tool, rounds=rounds, duration=duration,
            connections=args.connections, load_cpus=cpus[0] if cpus else None,
            together=together,
            progress=None if args.json else lambda m: print(" ", m, file=sys.stderr))
    s = spread(result.ratios("protected"))
    cpu = spread(result.cpu_ratios("protected")) if result.cpu_ratios("protected") else None
    per_request = {name: spread(c)["median"] * 1e6 for name, c in result.cpu.items()}
    rows = [{
        "metric": "route behind KeyplaneMiddleware (warm cache) / same route",
        "ratio": s["median"], "min": s["min"], "max": s["max"], "target": f">= {TARGET}",
        "ok": s["median"] >= TARGET,
        "detail": (f"protected {spread(result.rates['protected'])['median']:.0f} req/s, plain "
                   f"{spread(result.rates['plain'])['median']:.0f} req/s; tool {tool}, "
                   f"{rounds}x{duration:.0f}s; "
                   f"{'servers pinned to CPU ' + str(min(cpus[1])) if cpus else 'unpinned'}"
                   f"{', side by side' if together else ', one after the other'}; "
                   f"errors {result.errors}"
                   + (f"; server CPU per request {per_request['protected']:.1f} vs "
                      f"{per_request['plain']:.1f} us: CPU ratio {cpu['median']:.2f} "
                      f"({cpu['min']:.2f}-{cpu['max']:.2f})" if cpu else "")),
    }]
    report("middleware", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
