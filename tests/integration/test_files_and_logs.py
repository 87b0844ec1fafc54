"""What Keyplane leaves on the disk and in the logs: the data directory and the SQLite files it
creates are private to the server's user, and a secret pasted where it does not belong (a URL
path, a query, an exception message) is redacted from every log record."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.core.apps import CredentialPrefixes
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.core.tokens import generate, redact_secrets
from keyplane.logs import install_redaction
from keyplane.web.app import create_app
from tests.conftest import Tenant, auth, make_settings
from tests.integration.logs import UVICORN_LOGGERS
from tests.integration.test_secrets_never_leak import leaks
from tests.support import free_port, start_server


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: the modes must come from Keyplane, not from the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_fresh_data_directory_and_its_files_are_private(tmp_path: Path,
                                                          open_umask: None) -> None:
    data = tmp_path / "created" / "data"
    kp = build(make_settings(tmp_path, "", data_dir=data, database_url=None), migrate_db=True)
    try:
        kp.tenants.create(SYSTEM, {"name": "Acme"})  # a write: the WAL and its index exist
        db = data / "keyplane.db"
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), data / "peppers.json"]
        assert all(f.exists() for f in files)
        assert {str(f.name): mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(data) == 0o700
        assert mode(tmp_path / "created") == 0o700  # Keyplane created it too
    finally:
        kp.close()


def test_a_directory_the_operator_made_keeps_its_mode(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    os.chmod(data, 0o750)
    kp = build(make_settings(tmp_path, "", data_dir=data, database_url=None), migrate_db=True)
    try:
        kp.tenants.create(SYSTEM, {"name": "Acme"})
        assert mode(data) == 0o750
        assert mode(data / "keyplane.db") == 0o600
        assert mode(Path(f"{data / 'keyplane.db'}-wal")) == 0o600
    finally:
        kp.close()


def secrets_of_every_kind() -> dict[str, str]:
    p = CredentialPrefixes.derive("kp")
    return {"key": generate(p.key), "access token": generate(p.access_token),
            "refresh token": generate(p.refresh_token), "client secret": generate(p.client_secret),
            "other prefix": generate("acme")}


def test_secrets_in_request_urls_never_reach_a_log_record(
        keyplane: Keyplane, tenant: Tenant, all_logs: pytest.LogCaptureFixture) -> None:
    """Every logger at DEBUG, uvicorn's own access log on: Keyplane's access log, its security
    log, uvicorn's access log and the error logs show only the recognisable start."""
    running = start_server(create_app(keyplane, manage_lifecycle=False), access_log=True,
                           log_level="debug")
    for name in UVICORN_LOGGERS:  # uvicorn configured them anew
        logging.getLogger(name).addHandler(all_logs.handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    found = secrets_of_every_kind()
    try:
        with httpx2.Client(base_url=running.url, timeout=10) as http:
            h = auth(tenant.management_key)
            for secret in found.values():
                for path in (f"/v1/keys/{secret}", f"/v1/apps/{secret}/rotate-secret",
                             f"/{secret}", f"/v1/keys?cursor={secret.replace('_', '%5F')}"):
                    assert http.get(path, headers=h).status_code < 500, path
                r = http.get("/v1/keys", params={"api_key": secret})  # refused, logged
                assert r.status_code == 400
    finally:
        running.stop()
    records = all_logs.records
    assert any(r.name == "keyplane.access" for r in records)
    assert any(r.name == "uvicorn.access" for r in records)
    assert any(r.name == "keyplane.security" for r in records)
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''} {vars(r)!r}"
                       for r in records)
    for kind, secret in found.items():
        where = [line for line in logged.splitlines() if leaks(secret, line)]
        assert where == [], f"a {kind} reached the logs"
        prefix, _, rest = secret.partition("_")
        assert f"/v1/keys/{prefix}_{rest[:8]}[redacted]" in logged  # still recognisable


def test_a_secret_in_an_exception_or_a_message_is_redacted(
        all_logs: pytest.LogCaptureFixture) -> None:
    install_redaction()
    secret = secrets_of_every_kind()["refresh token"]
    log = logging.getLogger("keyplane.test")
    try:
        raise ValueError(f"cannot use {secret}")
    except ValueError:
        log.exception("failed for %s", secret)
    log.error(f"inline {secret}", stack_info=True)
    log.warning("as a mapping %(token)s", {"token": secret})
    formatter = logging.Formatter("%(message)s")
    text = "\n".join(formatter.format(r) + repr(vars(r)) for r in all_logs.records)
    assert text.count("[redacted]") >= 4
    assert leaks(secret, text) == []


def test_ids_and_the_verify_path_are_left_alone() -> None:
    for text in ("/v1/verify", "/v1/keys/key_0mx5pmmoxWRxiejBiYsKtr/rotate",
                 "request_id=0123456789abcdef", "tenant loc_0mx5pmmarj9oqhd9NWAVTR"):
        assert redact_secrets(text) == text


def test_keyplane_serve_writes_json_lines_with_request_ids_and_no_secret(
        tmp_path: Path) -> None:
    """``keyplane serve`` as shipped (JSON logs by default, the access log on): every line the
    process writes is one JSON object; each request's lines carry the id its answer sent back;
    keys, the pepper and a password go through create, verify, rotate, revoke and sign-in
    (right and wrong) and reach no line and no metric."""
    pepper = base64.b64encode(secrets.token_bytes(32)).decode()
    password = "correct horse " + secrets.token_hex(8)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env.update(KEYPLANE_DATA_DIR=str(data), KEYPLANE_PEPPERS=f"p1:{pepper}",
               KEYPLANE_DATABASE_URL=f"sqlite:///{data / 'kp.db'}")
    kp = build(make_settings(tmp_path, f"sqlite:///{data / 'kp.db'}", data_dir=data,
                             peppers=f"p1:{pepper}"), migrate_db=True)
    try:
        kp.catalogue.seed()
        tenant = kp.tenants.create(SYSTEM, {"name": "Acme"})
        admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER, {
            "email": "a@example.com", "role": "admin", "password": password})
        management = kp.keys.create(SYSTEM, tenant.id, {
            "name": "ops", "owner_id": admin.id, "scopes": ["keys:write", "contacts:read"],
            "require_tls": False}).secret
        gateway = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                "require_tls": False}, operator=True).secret
    finally:
        kp.close()
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "keyplane"), "serve", "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    ids: dict[str, str] = {}  # request id -> what the request was
    issued: list[str] = []
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)

            def call(label: str, method: str, path: str, **kwargs: Any) -> httpx2.Response:
                r = http.request(method, path, **kwargs)
                assert r.status_code < 500, (label, r.text)
                ids[r.headers["x-request-id"]] = f"{method} {path}"
                return r

            made = call("create", "POST", "/v1/keys", headers=auth(management), json={
                "name": "k", "scopes": ["contacts:read"], "require_tls": False}).json()
            assert "key" in made, made
            issued.append(made["key"])
            verify = {"headers": auth(gateway)}
            call("verify", "POST", "/v1/verify", json={"key": made["key"]}, **verify)
            call("verify again", "POST", "/v1/verify", json={"key": made["key"]}, **verify)
            rotated = call("rotate", "POST", f"/v1/keys/{made['id']}/rotate",
                           headers=auth(management)).json()
            issued.append(rotated["key"])
            call("verify new", "POST", "/v1/verify", json={"key": rotated["key"]}, **verify)
            call("in the path", "GET", f"/v1/keys/{rotated['key']}", headers=auth(management))
            call("revoke", "DELETE", f"/v1/keys/{made['id']}", headers=auth(management))
            page = call("sign-in page", "GET", "/signin").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert token is not None
            for attempt in (password + "x", password):
                call("sign in", "POST", "/signin", data={
                    "email": "a@example.com", "password": attempt,
                    "csrf_token": token.group(1)})
            metrics = call("metrics", "GET", "/metrics").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lines = log_path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "request_id"} <= set(p) for p in parsed)
    assert any(p["message"].startswith("Keyplane listening on") for p in parsed)
    assert any(p["logger"].startswith("uvicorn") for p in parsed)  # uvicorn's lines too
    access = [p for p in parsed if p["logger"] == "keyplane.access"]
    by_id = {p["request_id"]: p for p in access}
    assert set(ids) <= set(by_id)  # every request logged once under the id it answered with
    for request_id, what in ids.items():
        line = by_id[request_id]
        assert f"{line['method']} {line['path']}" == what or "[redacted]" in line["path"]
        assert isinstance(line["status"], int) and isinstance(line["duration_ms"], float)
        assert line["client"] == "127.0.0.1"
    assert any("[redacted]" in p["path"] for p in access)  # the key pasted into a path
    for secret in [*issued, management, gateway]:
        assert leaks(secret, "\n".join(lines)) == [] and leaks(secret, metrics) == []
    for text in (pepper, password):
        assert text not in log_path.read_text() and text not in metrics


def test_the_access_writer_escapes_what_json_needs_and_writes_whole_lines() -> None:
    """The served process's access lines (``keyplane.logs.AccessWriter``): a quote, a
    backslash or an escaped control character in the path stays inside its JSON string, and
    the text format keeps the readable line."""
    import io

    from keyplane.logs import AccessWriter

    out = io.StringIO()
    writer = AccessWriter(logging.StreamHandler(out), json_lines=True)
    writer.write("127.0.0.1", "GET", '/a"b\\x01c', 404, 0.0012, "0123456789abcdef")
    writer.write("::1", "POST", "/v1/verify", 200, 0.0004, "fedcba9876543210")
    assert out.getvalue() == ""  # buffered ...
    writer.close()  # ... until a flush (every half second, 256 lines, at exit)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["path"] == '/a"b\\x01c' and first["status"] == 404
    assert first["message"] == 'GET /a"b\\x01c 404' and first["duration_ms"] == 1.2
    assert second == {**second, "client": "::1", "method": "POST", "path": "/v1/verify",
                      "request_id": "fedcba9876543210", "level": "info",
                      "logger": "keyplane.access"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", second["time"])

    text = io.StringIO()
    writer = AccessWriter(logging.StreamHandler(text), json_lines=False)
    writer.write("127.0.0.1", "POST", "/v1/verify", 200, 0.0004, "fedcba9876543210")
    writer.close()
    assert text.getvalue().endswith(
        ' INFO keyplane.access 127.0.0.1 "POST /v1/verify" 200 0.4ms '
        "request_id=fedcba9876543210\n")
