"""Keyplane vs djangorestframework-api-key's ``HasAPIKey``, on the same machine and server.

Baseline: a Django REST framework view with ``permission_classes = [HasAPIKey]`` (SHA-512 key
check against SQLite, one query per request), served by uvicorn (one worker) as Django's ASGI
app. Against it, with the same load generator in interleaved rounds:

* the same JSON route behind KeyplaneMiddleware (warm cache) on one uvicorn worker, which is
  what a product developer compares (each request is a verified request);
* ``POST /v1/verify`` on one Keyplane worker (a verified request over Keyplane's HTTP API).

Target: Keyplane's verified-request rate at least 20 times the baseline. Needs the ``bench``
extra: ``pip install -e '.[bench]'``.

    .venv/bin/python bench/djrf_compare.py [--quick] [--json] [--tool wrk|python]
"""

from __future__ import annotations

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
    keyplane_fixture,
    report,
    spread,
    tool_name,
    uvicorn,
)

TARGET = 20.0


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    try:
        import rest_framework_api_key  # noqa: F401
    except ImportError:
        print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    tool = tool_name(args.tool)
    rounds = args.rounds or (2 if args.quick else 4)
    duration = args.duration or (3.0 if args.quick else 8.0)
    django_dir = Path(tempfile.mkdtemp(prefix="djrf-bench-"))
    env = {"BENCH_DJANGO_DIR": str(django_dir)}
    try:
        djrf_key = subprocess.run([PYTHON, str(BENCH_DIR / "_djrf.py"), "setup"],
                                  env={**os.environ, **env}, capture_output=True, text=True,
                                  check=True).stdout.strip()
        with keyplane_fixture() as fx, \
                uvicorn("_djrf:application", env=env) as djrf, \
                uvicorn("keyplane.web.asgi:app_factory", factory=True, env=fx.env,
                        health="/healthz") as kp, \
                uvicorn("_apps:protected", factory=True,
                        env={"BENCH_KEYPLANE_URL": kp.url,
                             "BENCH_VERIFIER_KEY": fx.verifier_key}) as guarded:
            djrf_headers = {"Authorization": f"Api-Key {djrf_key}"}
            if httpx2.get(djrf.url + "/contacts", headers=djrf_headers).status_code != 200:
                print("the DRF view refuses its key", file=sys.stderr)
                return 1
            if httpx2.get(djrf.url + "/contacts").status_code not in (401, 403):
                print("the DRF view lets a request without a key through", file=sys.stderr)
                return 1
            kp_headers = {"Authorization": f"Bearer {fx.data_key}"}
            if httpx2.get(guarded.url + "/contacts", headers=kp_headers).status_code != 200:
                print("the Keyplane-protected route refuses its key", file=sys.stderr)
                return 1
            body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"]}).encode()
            verify_headers = {"Authorization": f"Bearer {fx.verifier_key}",
                              "Content-Type": "application/json"}
            targets = [
                Target("djrf", djrf.url + "/contacts", headers=djrf_headers),
                Target("middleware", guarded.url + "/contacts", headers=kp_headers),
                Target("verify", kp.url + "/v1/verify", "POST", body, verify_headers),
            ]
            result = compare(targets, "djrf", tool=tool, rounds=rounds, duration=duration,
                             connections=args.connections,
                             progress=None if args.json else lambda m: print(
                                 " ", m, file=sys.stderr))
    finally:
        shutil.rmtree(django_dir, ignore_errors=True)
    rows = []
    for name, label in (("middleware", "KeyplaneMiddleware route rps / DRF HasAPIKey rps"),
                        ("verify", "POST /v1/verify rps / DRF HasAPIKey rps")):
        s = spread(result.ratios(name))
        rows.append({
            "metric": label, "ratio": s["median"], "min": s["min"], "max": s["max"],
            "target": f">= {TARGET:.0f}", "ok": s["median"] >= TARGET,
            "detail": (f"{spread(result.rates[name])['median']:.0f} vs "
                       f"{spread(result.rates['djrf'])['median']:.0f} req/s; tool {tool}, "
                       f"{rounds}x{duration:.0f}s; errors {result.errors}"),
        })
    report("djrf_compare", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
