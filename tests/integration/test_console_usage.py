"""A key's page in the console: requests per day by outcome over the last 30 days, drawn on the
server as an accessible SVG with the numbers as a table too, and the key's last denials with
their reasons (bounded: only each key's newest are kept). Over plain HTTP; the browser sees the
same page in test_console_browser.py."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import httpx2
import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane
from keyplane.core.rights import SYSTEM
from keyplane.services.usage import DENIALS_KEPT
from tests.conftest import Tenant, make_tenant
from tests.integration.console_support import MEMBER_PASSWORD, add_member, signed_in
from tests.integration.helpers import create_key, verify
from tests.support import SettableClock


def section(html: str, heading_id: str) -> str:
    start = html.index(f'id="{heading_id}"')
    return html[start:html.index("</section>", start)]


def denial_rows(html: str) -> list[tuple[str, str, str]]:
    """(outcome, reason, from) of each row of the last denials, newest first."""
    table = section(html, "denials-title")
    return [(unescape(o), unescape(r), unescape(re.sub(r"<[^>]+>", "", f)))
            for o, r, f in re.findall(
                r'<td data-label="Outcome">([^<]*)</td>\s*<td data-label="Reason" '
                r'class="reason">([^<]*)</td>\s*<td data-label="From">(.*?)</td>', table)]


def test_the_key_page_draws_requests_per_day_by_outcome(
        http: httpx2.Client, keyplane: Keyplane, clock: SettableClock, tenant: Tenant,
        verifier_key: str) -> None:
    clock.set(clock.now().replace(hour=12, minute=0, second=0))
    key = create_key(http, tenant.management_key, scopes=["contacts:read"])
    signed_in(http, tenant.admin_email, tenant.admin_password)
    quiet = http.get(f"/keys/{key['id']}")
    assert quiet.status_code == 200
    assert "No requests in the last 30 days." in section(quiet.text, "usage-title")
    assert "No request made with this key has been refused." in quiet.text

    clock.advance(days=-40)  # outside the chart: never drawn
    assert verify(http, verifier_key, key["key"])["code"] == "VALID"
    clock.advance(days=38)  # two days ago
    for _ in range(3):
        assert verify(http, verifier_key, key["key"])["code"] == "VALID"
    assert verify(http, verifier_key, key["key"], scopes=["contacts:write"])["code"] == \
        "INSUFFICIENT_SCOPE"
    clock.advance(days=2)  # today
    for _ in range(2):
        assert verify(http, verifier_key, key["key"])["code"] == "VALID"
    keyplane.usage.flush()

    page = http.get(f"/keys/{key['id']}")
    usage = section(page.text, "usage-title")
    assert '<svg class="usage-chart"' in usage and 'role="img"' in usage
    assert 'aria-labelledby="chart-title" aria-describedby="chart-desc"' in usage
    desc = unescape(re.search(r'<desc id="chart-desc">([^<]+)</desc>', usage).group(1))  # type: ignore[union-attr]
    two_days_ago = (clock.now() - timedelta(days=2)).strftime("%-d %B")
    assert desc == ("6 requests in the last 30 days (5 allowed, 1 missing scope); 1 refused. "
                    f"The busiest day was {two_days_ago}, with 4.")
    # one bar part per day and outcome that had requests, each titled for a pointer
    day = (clock.now() - timedelta(days=2)).strftime("%-d %b")
    today = clock.now().strftime("%-d %b")
    titles = re.findall(r"<title>([^<]+)</title></rect>", usage)
    assert sorted(titles) == sorted([f"{day}: 3 allowed", f"{day}: 1 missing scope",
                                     f"{today}: 2 allowed"])
    assert "Allowed: 5" in usage and "Missing scope: 1" in usage  # the legend
    # the table: newest day first, only days with requests
    table = usage[usage.index("<table"):usage.index("</table>")]
    heads = re.findall(r'<th scope="col">([^<]+)</th>', table)
    assert heads == ["Day", "Allowed", "Missing scope", "Total"]
    days = re.findall(r'<th scope="row">([^<]+)</th>', table)
    assert days == [clock.now().strftime("%-d %b %Y"),
                    (clock.now() - timedelta(days=2)).strftime("%-d %b %Y")]
    assert re.findall(r'<td data-label="Total">([^<]+)</td>', table) == ["2", "4"]


def test_the_last_denials_say_why_and_only_the_newest_are_kept(
        http: httpx2.Client, keyplane: Keyplane, clock: SettableClock, tenant: Tenant,
        verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, scopes=["contacts:read"],
                     allowed_ips=["203.0.113.0/24"])
    assert verify(http, verifier_key, key["key"], ip="203.0.113.7")["code"] == "VALID"
    assert verify(http, verifier_key, key["key"], ip="198.51.100.9")["code"] == \
        "IP_NOT_ALLOWED"
    clock.advance(seconds=5)
    assert verify(http, verifier_key, key["key"], ip="203.0.113.7",
                  scopes=["payments:write"])["code"] == "INSUFFICIENT_SCOPE"
    clock.advance(seconds=5)
    assert verify(http, verifier_key, key["key"], ip="203.0.113.7", tls=False)["code"] == \
        "TLS_REQUIRED"
    keyplane.usage.flush()
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get(f"/keys/{key['id']}")
    assert denial_rows(page.text) == [
        ("Not a secure connection", "The key may only be used over a secure connection",
         "203.0.113.7"),
        ("Missing scope", "Missing scope: payments:write", "203.0.113.7"),
        ("Address not allowed", "The client address is not in the key's allowlist",
         "198.51.100.9"),
    ]
    # a verifier that sends the same refused question again: each one is a new denial, and a
    # flood keeps only the key's newest few, in memory and in storage
    for i in range(DENIALS_KEPT + 15):
        clock.advance(seconds=1)
        assert verify(http, verifier_key, key["key"], ip="203.0.113.7",
                      scopes=["contacts:write"])["code"] == "INSUFFICIENT_SCOPE"
        if i == 10:
            keyplane.usage.flush()
    keyplane.usage.flush()
    with keyplane.engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT count(*) FROM key_denials WHERE key_id = :k"),
                            {"k": key["id"]}).scalar_one()
    assert kept == DENIALS_KEPT
    shown = denial_rows(http.get(f"/keys/{key['id']}").text)
    assert len(shown) == 10
    assert set(shown) == {("Missing scope", "Missing scope: contacts:write", "203.0.113.7")}


def test_a_member_sees_usage_and_denials_of_their_tenants_keys_only(
        http: httpx2.Client, keyplane: Keyplane, tenant: Tenant, verifier_key: str) -> None:
    key = create_key(http, tenant.management_key, scopes=["contacts:read"])
    assert verify(http, verifier_key, key["key"], scopes=["forms:read"])["code"] == \
        "INSUFFICIENT_SCOPE"
    other = make_tenant(keyplane, "Globex")
    theirs = keyplane.keys.create(SYSTEM, other.id, {"name": "Theirs", "owner_id": other.admin_id})
    assert verify(http, verifier_key, theirs.secret, scopes=["forms:read"])["code"] == \
        "INSUFFICIENT_SCOPE"
    keyplane.usage.flush()
    add_member(keyplane, tenant.id, "mia@example.com", role="read_only")
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    page = http.get(f"/keys/{key['id']}")
    assert page.status_code == 200
    assert denial_rows(page.text) == [("Missing scope", "Missing scope: forms:read",
                                       "Not given")]
    assert "1 missing scope" in section(page.text, "usage-title")
    # read_only: nothing on the page touches a secret
    for action in (">Rotate<", ">Duplicate as new key<", ">Delete<", ">Lock<", "new-secret"):
        assert action not in page.text, action
    assert http.get(f"/keys/{theirs.key.id}").status_code == 404


def test_refusals_of_too_many_keys_at_once_are_only_counted(
        keyplane: Keyplane, clock: SettableClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyplane.services import usage as usage_module

    monkeypatch.setattr(usage_module, "DENIAL_KEYS_HELD", 3)
    recorder = keyplane.usage
    now = clock.timestamp()
    for i in range(5):
        recorder.record(f"key_{i}", now, "INSUFFICIENT_SCOPE", reason="missing scope: forms:read",
                        ip="203.0.113.9")
    recorder.record("key_0", now, "EXPIRED", reason="the key has expired")
    assert recorder.denials_dropped == 2
    assert recorder.flush() == 6
    with keyplane.engine.connect() as conn:
        listed = conn.execute(sa.text(
            "SELECT key_id, count(*) FROM key_denials GROUP BY key_id ORDER BY key_id")).all()
        counted = conn.execute(sa.text(
            "SELECT count(DISTINCT key_id) FROM key_usage")).scalar_one()
    assert [tuple(r) for r in listed] == [("key_0", 2), ("key_1", 1), ("key_2", 1)]
    assert counted == 5  # every refusal still counts in the usage chart
