"""Latency of the OAuth endpoints (/oauth/token with a refresh, /oauth/introspect,
/oauth/revoke) against POST /v1/verify of an access token, on one server in the same run.

A temporary Keyplane (SQLite) serves on a loopback port in this process; one admin connects one
app through the real sign-in and consent forms, then each endpoint is called sequentially. The
report is p50/p95 per endpoint and the ratio of each p50 to the verify p50 (a cache hit).

    .venv/bin/python bench/oauth_endpoints.py [--calls 200]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from keyplane.bootstrap import build  # noqa: E402
from keyplane.config import Settings  # noqa: E402
from keyplane.core.model import PrincipalKind  # noqa: E402
from keyplane.core.rights import SYSTEM  # noqa: E402
from keyplane.web.app import create_app  # noqa: E402

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="kp-bench-oauth-"))
    kp = build(Settings(data_dir=data), migrate_db=True)
    kp.catalogue.seed()
    tenant = kp.tenants.create(SYSTEM, {"name": "Acme"})
    kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {
        "email": "admin@example.com", "role": "admin", "password": "bench password 123"})
    admin = kp.principals.list(SYSTEM, tenant.id, kind=None, limit=5, cursor=None).items[0]
    mgmt = kp.keys.create(SYSTEM, tenant.id, {"name": "ops", "owner_id": admin.id,
                                              "require_tls": False,
                                              "scopes": ["tenant:write", "keys:write"]}).secret
    operator = kp.keys.create(SYSTEM, None, {"name": "op", "require_tls": False,
                                             "scopes": ["platform:write", "keys:verify"]},
                              operator=True).secret
    config = uvicorn.Config(create_app(kp), host="127.0.0.1", port=0, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx2.Client(base_url=base, timeout=30) as http:
            auth = {"Authorization": f"Bearer {mgmt}"}
            app = http.post("/v1/apps", headers=auth, json={
                "name": "Bench", "homepage": "https://bench.example",
                "redirect_uris": ["https://bench.example/cb"],
                "scopes": ["contacts:read"]}).json()
            approved = http.post(f"/v1/apps/{app['id']}/approve",
                                 headers={"Authorization": f"Bearer {operator}"}).json()
            client = (approved["client_id"], approved["client_secret"])
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(
                hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            url = "/oauth/authorize?" + urlencode({
                "response_type": "code", "client_id": client[0],
                "redirect_uri": "https://bench.example/cb", "state": "s",
                "code_challenge": challenge, "code_challenge_method": "S256"})
            page = http.get("/signin")
            http.post("/signin", data={"email": "admin@example.com",
                                       "password": "bench password 123", "next": url,
                                       "csrf_token": CSRF.findall(page.text)[0]})
            consent = http.get(url)
            r = http.post(url, data={"csrf_token": CSRF.findall(consent.text)[0],
                                     "decision": "allow", "scope": "contacts:read"})
            code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
            tokens = http.post("/oauth/token", auth=client, data={
                "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                "redirect_uri": "https://bench.example/cb"}).json()
            state = {"refresh": tokens["refresh_token"], "access": [tokens["access_token"]]}

            def refresh() -> None:
                out = http.post("/oauth/token", auth=client, data={
                    "grant_type": "refresh_token", "refresh_token": state["refresh"]}).json()
                state["refresh"] = out["refresh_token"]
                state["access"].append(out["access_token"])

            access = tokens["access_token"]
            verify_body = {"key": access, "scopes": ["contacts:read"], "tls": True}
            op = {"Authorization": f"Bearer {operator}"}
            results = {
                "POST /v1/verify (access token)": timed(
                    lambda: http.post("/v1/verify", json=verify_body, headers=op), args.calls),
                "POST /oauth/introspect": timed(
                    lambda: http.post("/oauth/introspect", auth=client,
                                      data={"token": access}), args.calls),
                "POST /oauth/token (refresh)": timed(refresh, args.calls),
            }
            doomed = iter(list(state["access"]))
            results["POST /oauth/revoke (access)"] = timed(
                lambda: http.post("/oauth/revoke", auth=client,
                                  data={"token": next(doomed)}), args.calls)
    finally:
        server.should_exit = True
        thread.join(10)
        kp.close()
    baseline = statistics.median(next(iter(results.values())))
    print(f"{'endpoint':34} {'p50 ms':>8} {'p95 ms':>8} {'p50 / verify p50':>18}")
    for name, samples in results.items():
        samples.sort()
        p50 = statistics.median(samples)
        p95 = samples[int(len(samples) * 0.95) - 1]
        print(f"{name:34} {p50:8.2f} {p95:8.2f} {p50 / baseline:18.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
