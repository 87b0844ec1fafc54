"""Small HTTP helpers for the integration suites (assertions stay in the tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx2

from tests.conftest import auth


def create_key(http: httpx2.Client, key: str, path: str = "/v1/keys",
               **body: Any) -> dict[str, Any]:
    """POST a key and return the created object (with its secret under ``key``)."""
    body.setdefault("name", "integration")
    r = http.post(path, json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def verify(http: httpx2.Client, verifier: str, key: str, **extra: Any) -> dict[str, Any]:
    """POST /v1/verify (``tls`` defaults to true) and return the answer; always a 200."""
    extra.setdefault("tls", True)
    r = http.post("/v1/verify", json={"key": key, **extra}, headers=auth(verifier))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def code(http: httpx2.Client, verifier: str, key: str, **extra: Any) -> str:
    return str(verify(http, verifier, key, **extra)["code"])


def when(value: str) -> datetime:
    """Parse the API's ``...Z`` timestamps."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def all_key_ids(http: httpx2.Client, key: str, path: str = "/v1/keys") -> list[str]:
    """Every key id in a listing, walking the cursor."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        r = http.get(path, params=params, headers=auth(key))
        assert r.status_code == 200, r.text
        ids += [k["id"] for k in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return ids
