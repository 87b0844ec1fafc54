"""ETag and If-Match on keys (issue 8, item 14): a careful client never walks away with a secret
that a concurrent rotation already ended. Real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx2

from tests.conftest import Tenant, auth
from tests.integration.helpers import code, create_key


def test_every_answer_about_a_key_carries_its_etag(http: httpx2.Client, tenant: Tenant) -> None:
    mk = auth(tenant.management_key)
    r = http.post("/v1/keys", json={"name": "crm"}, headers=mk)
    created_tag = r.headers["etag"]
    key_id = r.json()["id"]
    shown = http.get(f"/v1/keys/{key_id}", headers=mk)
    assert shown.headers["etag"] == created_tag  # the same state, the same tag
    assert created_tag.startswith('"') and created_tag.endswith('"')
    edited = http.patch(f"/v1/keys/{key_id}", json={"name": "crm 2"}, headers=mk)
    assert edited.headers["etag"] != created_tag
    assert http.get(f"/v1/keys/{key_id}", headers=mk).headers["etag"] == edited.headers["etag"]
    rotated = http.post(f"/v1/keys/{key_id}/rotate", json={}, headers=mk)
    assert rotated.headers["etag"] not in (created_tag, edited.headers["etag"])
    assert http.get(f"/v1/keys/{key_id}", headers=mk).headers["etag"] == rotated.headers["etag"]


def test_a_stale_if_match_is_refused_with_412_and_changes_nothing(
    http: httpx2.Client, tenant: Tenant, verifier_key: str
) -> None:
    mk = auth(tenant.management_key)
    key = create_key(http, tenant.management_key, require_tls=False)
    stale = http.get(f"/v1/keys/{key['id']}", headers=mk).headers["etag"]
    first = http.post(f"/v1/keys/{key['id']}/rotate", json={"grace_period_seconds": 0},
                      headers=mk | {"If-Match": stale})
    assert first.status_code == 200, first.text
    current = first.json()["key"]

    r = http.post(f"/v1/keys/{key['id']}/rotate", json={"grace_period_seconds": 0},
                  headers=mk | {"If-Match": stale})
    assert r.status_code == 412
    assert r.json()["error"]["code"] == "precondition_failed"
    assert r.json()["error"]["field"] == "If-Match"
    assert '"key"' not in r.text and "kp_" not in r.text
    assert code(http, verifier_key, current) == "VALID"  # the winner's secret still works
    r = http.patch(f"/v1/keys/{key['id']}", json={"name": "late"},
                   headers=mk | {"If-Match": stale})
    assert r.status_code == 412
    assert http.get(f"/v1/keys/{key['id']}", headers=mk).json()["name"] == "integration"
    # a weak tag never matches (strong comparison), "*" always does, and so does a list
    tag = first.headers["etag"]
    r = http.patch(f"/v1/keys/{key['id']}", json={"name": "x"}, headers=mk | {
        "If-Match": f"W/{tag}"})
    assert r.status_code == 412
    r = http.patch(f"/v1/keys/{key['id']}", json={"name": "x"}, headers=mk | {
        "If-Match": f'"nope", {tag}'})
    assert r.status_code == 200
    r = http.patch(f"/v1/keys/{key['id']}", json={"name": "y"}, headers=mk | {"If-Match": "*"})
    assert r.status_code == 200


def test_of_twenty_concurrent_rotations_with_if_match_exactly_one_wins(
    http: httpx2.Client, tenant: Tenant, verifier_key: str
) -> None:
    mk = auth(tenant.management_key)
    key = create_key(http, tenant.management_key, require_tls=False)
    tag = http.get(f"/v1/keys/{key['id']}", headers=mk).headers["etag"]

    def rotate(_: int) -> httpx2.Response:
        with httpx2.Client(base_url=str(http.base_url), timeout=30) as client:
            return client.post(f"/v1/keys/{key['id']}/rotate", json={},
                               headers=mk | {"If-Match": tag})

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(rotate, range(20)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [412] * 19
    winner = next(r for r in answers if r.status_code == 200).json()["key"]
    assert code(http, verifier_key, winner) == "VALID"
    assert code(http, verifier_key, key["key"]) == "VALID"  # its grace runs
