"""Bad input at ``/v1/verify`` is the caller's problem, not the server's: a clean 4xx, and
nothing alarming in the server's log (issue 8, item 13: an unpaired surrogate in ``key`` used to
log a traceback at ERROR on the fast path)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth
from tests.integration.helpers import verify


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def alarming(self) -> list[str]:
        return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records
                if r.levelno >= logging.WARNING or r.exc_info]


@pytest.fixture
def server_log() -> Iterator[Records]:
    """Every record the in-process server logs (uvicorn's loggers do not propagate)."""
    handler = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"),
               logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


BAD_BODIES = [
    b'{"key": "\\ud800", "tls": true}',  # an unpaired surrogate
    b'{"key": "kp_\\udfff\\ud800x", "tls": true}',
    b'{"key": "KEY", "scopes": ["\\ud800"], "tls": true}',
    b'{"key": "KEY", "ip": "\\ud800", "tls": true}',
    b'{"key": "KEY", "ip": "fe80::1%eth0", "tls": true}',
    b'{"key": "KEY", "tls": true, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"key": "KEY", "tls": true, "x": ' + b"[" * 16000,  # over the fast path's 16 KiB
]


def test_bad_verify_bodies_get_a_4xx_and_log_nothing_alarming(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str,
        server_log: Records) -> None:
    secret = keyplane.keys.create(SYSTEM, tenant.id, {
        "name": "k", "owner_id": tenant.admin_id, "scopes": ["contacts:read"]}).secret
    for _ in range(2):  # the route, then the fast path with both keys cached
        assert verify(http, verifier_key, secret)["code"] == "VALID"
        for body in BAD_BODIES:
            r = http.post("/v1/verify", content=body.replace(b"KEY", secret.encode()),
                          headers={**auth(verifier_key), "content-type": "application/json"})
            assert r.status_code in (400, 422), (body[:60], r.status_code, r.text)
            assert r.json()["error"]["code"] in ("invalid_request", "json_too_deep",
                                                 "malformed_json")
    assert server_log.alarming() == []
