"""The HTTP contract: ``Allow`` on OPTIONS and 405 for every route, /openapi.json documenting
each 4xx an operation can give, and schemathesis ``--checks all`` finding nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import build
from keyplane.core.rights import SYSTEM
from keyplane.web.app import create_app
from tests.conftest import make_settings, make_tenant
from tests.support import sqlite_url, start_server

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "post", "put", "patch", "delete")


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_options_and_405_name_every_method_of_the_path(http: httpx2.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert len(paths) > 30
    for path, operations in paths.items():
        if path == "/v1/forward-auth":  # answers every method, OPTIONS included, as the
            # original request's: a proxy may ask about a preflight (here: an untrusted peer)
            assert set(operations) >= {"get", "post", "put", "patch", "delete", "options"}
            for method in ("OPTIONS", "GET", "TRACE"):
                r = http.request(method, path)
                assert r.status_code == 403, (method, r.status_code)
                assert r.json()["error"]["code"] == "proxy_not_trusted"
            continue
        declared = {m.upper() for m in operations if m in METHODS}
        expected = declared | {"OPTIONS"}
        r = http.options(concrete(path))
        assert r.status_code == 204, (path, r.status_code)
        assert set(r.headers["allow"].split(", ")) - {"HEAD"} == expected, (path, r.headers)
        assert r.content == b""
        other = next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in declared)
        r = http.request(other, concrete(path))
        assert r.status_code == 405, (other, path, r.status_code)
        assert set(r.headers["allow"].split(", ")) - {"HEAD"} == expected, (other, path)
        assert r.json()["error"]["code"] == "method_not_allowed"


def test_every_operation_documents_its_errors(http: httpx2.Client) -> None:
    schema = http.get("/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/Error"}
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            documented = set(responses)
            must = {"400", "431"}
            if op.get("security"):
                must |= {"401", "403", "429"}
                headers = responses["429"]["headers"]
                assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                        "RateLimit-Reset"} <= set(headers), (method, path)
            if "requestBody" in op:
                must |= {"413", "422"}
            if any(p["in"] == "path" for p in op.get("parameters", [])) and op.get("security"):
                must |= {"404"}
            assert must <= documented, (method, path, must - documented)
            for status in must - {"400", "401", "429"} if path.startswith("/oauth/") else must:
                body = responses[status]["content"]["application/json"]["schema"]
                assert body == error_ref, (method, path, status)


# -- schemathesis ---------------------------------------------------------------------------

@pytest.fixture
def contract_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real server on SQLite and a tenant's management key. The failure throttle is raised
    so schemathesis' own bad-credential probes do not lock its valid key out, and the tenant's
    policy allows every expiry the schema does (null: never; up to 3650 days)."""
    # webhook URLs: this sandbox resolves no public name, so private targets are allowed (the
    # schema then allows plain http too) and nothing is delivered: no worker sends anything
    kp = build(make_settings(tmp_path, sqlite_url(tmp_path), failure_limit=1_000_000,
                             webhook_allow_private_targets=True, webhook_worker=False),
               migrate_db=True)
    kp.start()
    tenant = make_tenant(kp)
    kp.tenants.update(SYSTEM, tenant.id, {"policy": {"allow_non_expiring": True,
                                                     "max_expiry_days": 3650}})
    running = start_server(create_app(kp, manage_lifecycle=False))
    try:
        yield running.url, tenant.management_key
    finally:
        running.stop()
        kp.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_checks_all_find_nothing(contract_server: tuple[str, str],
                                              tmp_path: Path) -> None:
    url, key = contract_server
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks"}
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", f"{url}/openapi.json", "--checks", "all",
           "-H", f"Authorization: Bearer {key}", "--max-examples", "10", "--seed", "1",
           "--generation-database", "none", "--no-color", "--report", "json",
           "--report-json-path", str(tmp_path / "report.json")]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=280, check=False)
    summary = run.stdout[-3000:]
    failures = run.stdout.partition("FAILURES")[2][:15000]  # each failure, with a curl line
    assert run.returncode == 0, (failures or run.stderr[-3000:]) + summary
    assert "failures" not in summary.rsplit("SUMMARY", 1)[-1].lower(), summary
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    assert report.get("failures") in ([], {}, None, 0), report.get("failures")
    operations = report["operations"]  # every operation was exercised
    assert operations["tested"] == operations["total"] >= 58, operations
