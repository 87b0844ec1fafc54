"""Names and other human-entered text refuse invisible and bidirectional-control characters
(Trojan-Source-style spoofing: ``invoice\u202egnp.exe``), over real HTTP on SQLite and
PostgreSQL, and /openapi.json states the same rule with the same character class."""

from __future__ import annotations

import re

import httpx2
import pytest

from keyplane.services import validate as v
from tests.conftest import Tenant, auth
from tests.integration.helpers import create_key

NAMED = {  # every character the issue names, and one of each other kind
    "\u202e": "U+202E", "\u200b": "U+200B", "\ufeff": "U+FEFF", "\u200e": "U+200E",
    "\u200f": "U+200F", "\u202a": "U+202A", "\u2066": "U+2066", "\u2069": "U+2069",
    "\u2060": "U+2060", "\u2064": "U+2064", "\u00ad": "U+00AD",
}


def refused(r: httpx2.Response, field: str, char: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field
    assert error["message"] == (f"{field} must not contain invisible or bidirectional-control "
                                f"characters ({NAMED[char]})")


@pytest.mark.parametrize("char", list(NAMED))
def test_keys_and_groups_refuse_invisible_characters(http: httpx2.Client, tenant: Tenant,
                                                     char: str) -> None:
    mk = auth(tenant.management_key)
    spoof = f"billing{char}gnp.exe"
    refused(http.post("/v1/keys", json={"name": spoof}, headers=mk), "name", char)
    refused(http.post("/v1/keys", json={"name": "ok", "description": spoof}, headers=mk),
            "description", char)
    key = create_key(http, tenant.management_key, name="billing")
    refused(http.patch(f"/v1/keys/{key['id']}", json={"name": spoof}, headers=mk), "name", char)
    refused(http.patch(f"/v1/keys/{key['id']}", json={"description": spoof}, headers=mk),
            "description", char)
    refused(http.post("/v1/groups", json={"name": spoof}, headers=mk), "name", char)
    refused(http.post("/v1/members", json={"email": "x@example.com", "name": spoof},
                      headers=mk), "name", char)

    # nothing was written: the key kept its name, no group or member appeared
    assert http.get(f"/v1/keys/{key['id']}", headers=mk).json()["name"] == "billing"
    assert http.get("/v1/groups", headers=mk).json()["items"] == []
    assert len(http.get("/v1/members", headers=mk).json()["items"]) == 1


def test_emoji_and_joined_scripts_stay_allowed(http: httpx2.Client, tenant: Tenant) -> None:
    name = "ops \U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert create_key(http, tenant.management_key, name=name)["name"] == name


def test_the_schema_states_the_same_rule(http: httpx2.Client) -> None:
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    name = schemas["KeyCreate"]["properties"]["name"]
    assert name["pattern"] == v.NAME_PATTERN and name["maxLength"] == v.MAX_NAME
    description = schemas["KeyCreate"]["properties"]["description"]["anyOf"][0]
    assert description["pattern"] == v.TEXT_PATTERN
    assert schemas["GroupCreate"]["properties"]["name"]["pattern"] == v.NAME_PATTERN
    assert schemas["KeyPatch"]["properties"]["name"]["pattern"] == v.NAME_PATTERN
    pattern = re.compile(name["pattern"])
    for char in NAMED:
        assert not pattern.match(f"billing{char}gnp.exe")
    assert pattern.match("billing")
