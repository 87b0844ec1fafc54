"""/v1/forward-auth: its rate against POST /v1/verify on the same Keyplane, and nginx with
``auth_request`` asking it against the same nginx proxying straight to the upstream.

One Keyplane worker (uvicorn, as ``keyplane serve``) trusting 127.0.0.1/32, with a route map;
the upstream is the bare ASGI hello-world on its own uvicorn worker; nginx (Debian's, one
worker) uses the README's configuration (tests/integration/nginx.py), keep-alive to both. Every
request presents a valid key with the scope its route needs, so each answer is a full VALID
verdict from the verification cache. Loaded by wrk if installed, else bench/_load.py, in
interleaved rounds. Targets (ratios): forward-auth / verify >= 0.8 (the same work, no body to
parse); nginx+auth / nginx direct: reported (the auth round trip doubles nginx's upstream
work, and Keyplane's worker shares the machine's cores with everything else).

    .venv/bin/python bench/forward_auth.py [--quick] [--json] [--tool wrk|python]
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import httpx2
from _common import (
    ROOT,
    Target,
    arguments,
    compare,
    keyplane_fixture,
    report,
    spread,
    tool_name,
    uvicorn,
)

sys.path.insert(0, str(ROOT))
from tests.integration.nginx import missing_nginx, nginx

TARGET = 0.8
DIRECT = """
    location / {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://product;
    }
"""


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    tool = tool_name(args.tool)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3.0 if args.quick else 8.0)
    missing = missing_nginx()
    with keyplane_fixture() as fx, contextlib.ExitStack() as stack:
        routes = Path(tempfile.mkdtemp(prefix="kp-routes-")) / "routes.toml"
        stack.callback(shutil.rmtree, routes.parent, True)
        routes.write_text('"GET /*" = ["contacts:read"]\n')
        env = {**fx.env, "KEYPLANE_TRUSTED_PROXIES": "127.0.0.1/32",
               "KEYPLANE_ROUTE_MAP": str(routes)}
        kp = stack.enter_context(uvicorn("keyplane.web.asgi:app_factory", factory=True,
                                         env=env, health="/healthz"))
        body = json.dumps({"key": fx.data_key, "scopes": ["contacts:read"],
                           "ip": "203.0.113.5", "tls": True}).encode()
        verify = Target("verify", kp.url + "/v1/verify", "POST", body,
                        {"Authorization": f"Bearer {fx.verifier_key}",
                         "Content-Type": "application/json"})
        forward = Target("forward-auth", kp.url + "/v1/forward-auth", "GET", None,
                         {"X-API-Key": fx.data_key, "X-Original-Method": "GET",
                          "X-Original-URI": "/contacts/1", "X-Forwarded-For": "203.0.113.5",
                          "X-Forwarded-Proto": "https"})
        for t in (verify, forward):
            r = httpx2.request(t.method, t.url, content=t.body, headers=t.headers)
            if r.status_code != 200:
                print(f"{t.name} answers {r.status_code}: {r.text}", file=sys.stderr)
                return 1
        targets = [verify, forward]
        if missing is None:
            hello = stack.enter_context(uvicorn("_apps:hello"))
            upstream = hello.url.removeprefix("http://")
            keyplane = kp.url.removeprefix("http://")
            direct = stack.enter_context(nginx(keyplane, upstream, DIRECT))
            guarded = stack.enter_context(nginx(keyplane, upstream))
            headers = {"X-API-Key": fx.data_key}
            if httpx2.get(guarded + "/contacts/1", headers=headers).status_code != 200:
                print("nginx + auth_request does not pass a valid key", file=sys.stderr)
                return 1
            targets += [Target("nginx direct", direct + "/contacts/1", headers=headers),
                        Target("nginx + forward-auth", guarded + "/contacts/1",
                               headers=headers)]
        else:
            print(f"nginx not measured: {missing}", file=sys.stderr)
        result = compare(targets, "verify", tool=tool, rounds=rounds, duration=duration,
                         connections=args.connections,
                         progress=None if args.json else lambda m: print(" ", m,
                                                                          file=sys.stderr))
    rates = {name: spread(v)["median"] for name, v in result.rates.items()}
    s = spread(result.ratios("forward-auth"))
    rows = [{"metric": "GET /v1/forward-auth rps / POST /v1/verify rps", "ratio": s["median"],
             "min": s["min"], "max": s["max"], "target": f">= {TARGET}",
             "ok": s["median"] >= TARGET,
             "detail": f"forward-auth {rates['forward-auth']:.0f} req/s, verify "
                       f"{rates['verify']:.0f} req/s; tool {tool}, {rounds}x{duration:.0f}s, "
                       f"{args.connections} connections; errors {result.errors}"}]
    if missing is None:
        ratios = [a / b for a, b in zip(result.rates["nginx + forward-auth"],
                                        result.rates["nginx direct"], strict=True)]
        n = spread(ratios)
        rows.append({"metric": "nginx + auth_request rps / nginx straight to the upstream",
                     "ratio": n["median"], "min": n["min"], "max": n["max"], "target": "-",
                     "ok": None,
                     "detail": f"with forward-auth {rates['nginx + forward-auth']:.0f} req/s, "
                               f"direct {rates['nginx direct']:.0f} req/s"})
    report("forward_auth", rows, as_json=args.json)
    return 0 if not any(result.errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
