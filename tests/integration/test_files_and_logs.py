"""What Keyplane leaves on the disk and in the logs: the data directory and the SQLite files it
creates are private to the server's user, and a secret pasted where it does not belong (a URL
path, a query, an exception message) is redacted from every log record."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.core.apps import CredentialPrefixes
from keyplane.core.rights import SYSTEM
from keyplane.core.tokens import generate, redact_secrets
from keyplane.logs import install_redaction
from keyplane.web.app import create_app
from tests.conftest import Tenant, auth, make_settings
from tests.integration.logs import UVICORN_LOGGERS
from tests.integration.test_secrets_never_leak import leaks
from tests.support import start_server


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
