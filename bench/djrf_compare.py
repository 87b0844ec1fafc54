"""Keyplane vs djangorestframework-api-key's ``HasAPIKey`` at its best, in the same run.

Baseline: a Django REST framework view with ``permission_classes = [HasAPIKey]`` (SHA-512 key
check against SQLite, one query per request) deployed the way its users deploy it: ``DEBUG``
off, persistent database connections (``CONN_MAX_AGE``), a WSGI server with one worker (as
many as Keyplane's): gunicorn (``gthread``, which keeps connections alive) and granian (WSGI),
both measured in every round; each round's baseline is the faster. Against it, with the same
load generator in interleaved rounds:

* ``POST /v1/verify`` on Keyplane exactly as ``keyplane serve`` runs it by default (one worker,
  access log on): a verified request over Keyplane's HTTP API;
* the same JSON route behind KeyplaneMiddleware (warm cache) on one uvicorn worker, which is
  what a product developer compares (each request is a verified request).

Target (issue 10): ``POST /v1/verify`` at least 20 times the baseline; the middleware's row is
information (its rate is bounded by the product's own route: see ``bench/middleware.py``).
Needs the ``bench`` extra: ``pip install -e '.[bench]'``.

    .venv/bin/python bench/djrf_compare.py [--quick] [--json] [--tool wrk|python]
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2
from _common import (
    BENCH_DIR,
    PYTHON,
    Target,
    arguments,
    compare,
    granian,
    gunicorn,
    keyplane_fixture,
    keyplane_serve,
    report,
    spread,
    tool_name,
    uvicorn,
)

TARGET = 20.0


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    if any(importlib.util.find_spec(m) is None
           for m in ("granian", "gunicorn", "rest_framework_api_key")):
        print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    tool = tool_name(args.tool)
    rounds = args.rounds or (3 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 6.0)
    django_dir = Path(tempfile.mkdtemp(prefix="djrf-bench-"))
    env = {"BENCH_DJANGO_DIR": str(django_dir)}
    try:
        djrf_key = subprocess.run([PYTHON, str(BENCH_DIR / "_djrf.py"), "setup"],
                                  env={**os.environ, **env}, capture_output=True, text=True,
                                  check=True).stdout.strip()
        with keyplane_fixture() as fx, \
                gunicorn("_djrf:wsgi", env=env) as djrf_gunicorn, \
                granian("_djrf:wsgi", interface="wsgi", env=env) as djrf_granian, \
                keyplane_serve(fx.env) as kp, \
                uvicorn("_apps:protected", factory=True,
                        env={"BENCH_KEYPLANE_URL": kp.url,
                             "BENCH_VERIFIER_KEY": fx.verifier_key}) as guarded:
            djrf_headers = {"Authorization": f"Api-Key {djrf_key}"}
            for djrf in (djrf_gunicorn, djrf_granian):
                if httpx2.get(djrf.url + "/contacts", headers=djrf_headers).status_code != 200:
                    print("the DRF view refuses its key", file=sys.stderr)
                    return 1
                if httpx2.get(djrf.url + "/contacts").status_code not in (401, 403):
                    print("the DRF view lets a request without a key through",
                          file=sys.stderr)
                    return 1
            kp_headers = {"Authorization": f"Bearer {fx.data_key}"}
            if httpx2.get(guarded.url + "/contacts", headers=kp_headers).status_code != 200:
                print("the Keyplane-protected route refuses its key", file=sys.stderr)
                return 1
            body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"]}).encode()
            verify_headers = {"Authorization": f"Bearer {fx.verifier_key}",
                              "Content-Type": "application/json"}
            targets = [
                Target("djrf gunicorn", djrf_gunicorn.url + "/contacts", headers=djrf_headers,
                       pid=djrf_gunicorn.process.pid),
                Target("djrf granian", djrf_granian.url + "/contacts", headers=djrf_headers,
                       pid=djrf_granian.process.pid),
                Target("middleware", guarded.url + "/contacts", headers=kp_headers),
                Target("verify", kp.url + "/v1/verify", "POST", body, verify_headers,
                       pid=kp.process.pid),
            ]
            result = compare(targets, "djrf", tool=tool, rounds=rounds, duration=duration,
                             connections=args.connections,
                             progress=None if args.json else lambda m: print(
                                 " ", m, file=sys.stderr))
    finally:
        shutil.rmtree(django_dir, ignore_errors=True)
    result.best_of("djrf", ["djrf gunicorn", "djrf granian"])
    rates = {name: spread(r)["median"] for name, r in result.rates.items()}
    load = spread(result.loads)
    rows = []
    cpu = {name: spread(c)["median"] * 1e6 for name, c in result.cpu.items()}
    for name, label in (("middleware", "KeyplaneMiddleware route / DRF HasAPIKey (info)"),
                        ("verify", "POST /v1/verify (keyplane serve) / DRF HasAPIKey (WSGI)")):
        s = spread(result.ratios(name))
        targeted = name == "verify"  # issue 10's target; the middleware row is information
        rows.append({
            "metric": label, "ratio": s["median"], "min": s["min"], "max": s["max"],
            "target": f">= {TARGET:.0f}" if targeted else "-",
            "ok": s["median"] >= TARGET if targeted else None,
            "detail": (f"{rates[name]:.0f} vs {rates['djrf']:.0f} req/s (gunicorn "
                       f"{rates['djrf gunicorn']:.0f}, granian {rates['djrf granian']:.0f}); "
                       f"tool {tool}, {rounds}x{duration:.0f}s, load average "
                       f"{load['min']:.1f}-{load['max']:.1f}; errors {result.errors}"
                       + (f"; server CPU per request {cpu[name]:.0f} us vs {cpu['djrf']:.0f} us "
                          f"(gunicorn {cpu['djrf gunicorn']:.0f}, granian "
                          f"{cpu['djrf granian']:.0f}): CPU ratio "
                          f"{spread(result.cpu_ratios(name))['median']:.1f}"
                          if name in cpu else "")),
        })
    report("djrf_compare", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
