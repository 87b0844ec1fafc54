"""The console's data access groups page over plain HTTP (a cookie-keeping client, no browser):
an admin creates a group with the scope grid, renames it, changes its data areas, adds and
removes members and API users (their keys follow at once), and deletes it after confirming;
members read only; another tenant's ids are not found; every form needs its CSRF token. The
browser walk-through is in test_console_browser.py."""

from __future__ import annotations

import re
from html import unescape

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import Conflict
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, make_tenant
from tests.integration.console_support import (
    MEMBER_PASSWORD,
    add_member,
    form_token,
    signed_in,
    verify,
)


def field_error(html: str, field: str) -> str:
    found = re.search(rf'<p class="field-error" id="{field}-error"><span class="sr-only">'
                      r'Error: </span>([^<]+)</p>', html)
    assert found, f"no error beside {field}"
    return unescape(found.group(1))


def ticked(html: str, scope: str) -> bool:
    box = re.search(rf'<input type="checkbox" name="scopes" value="{scope}"[^>]*>', html)
    assert box, f"no {scope} box"
    return " checked" in box.group(0)


def group_id(location: str) -> str:
    found = re.fullmatch(r"/groups/(grp_[A-Za-z0-9]+)\?done=created", location)
    assert found, location
    return found.group(1)


def robot_with_key(keyplane: Keyplane, tenant: Tenant, scopes: list[str]) -> tuple[str, str]:
    """An API user in a group "Start" holding ``scopes`` (an API user in no group holds no
    data scopes under the default policy), with a key of those scopes."""
    start = keyplane.groups.create(SYSTEM, tenant.id, {"name": "Start", "scopes": scopes}).id
    robot = keyplane.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                                       {"name": "Robot", "group_ids": [start]}).id
    issued = keyplane.keys.create(SYSTEM, tenant.id, {"name": "Robot key", "owner_id": robot,
                                                      "scopes": scopes})
    return robot, issued.secret


def test_an_admin_creates_a_group_with_the_scope_grid_and_renames_it(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    signed_in(http, tenant.admin_email, tenant.admin_password)
    empty = http.get("/groups")
    assert empty.status_code == 200
    assert "<title>Data access groups · Acme · Keyplane</title>" in empty.text
    assert 'aria-current="page">Groups' in empty.text
    assert "There are no data access groups yet" in empty.text
    form = http.get("/groups/new")
    assert form.status_code == 200
    # the key form's grid, data areas only: a group never holds a management scope
    assert 'value="contacts:read"' in form.text and 'value="payments:write"' in form.text
    assert 'value="keys:write"' not in form.text and 'value="members:read"' not in form.text
    token = form_token(http, "/groups/new")

    r = http.post("/groups", data={"csrf_token": token, "name": " ",
                                   "scopes": ["contacts:read"]})
    assert r.status_code == 422 and field_error(r.text, "name") == "Name must not be empty."
    assert ticked(r.text, "contacts:read") and not ticked(r.text, "contacts:write")
    r = http.post("/groups", data={"csrf_token": token, "name": "Sales",
                                   "description": "The sales team",
                                   "scopes": ["contacts:read", "contacts:write",
                                              "payments:read"]})
    assert r.status_code == 303
    sales = group_id(r.headers["location"])
    made = keyplane.groups.get(SYSTEM, tenant.id, sales)
    assert made.name == "Sales" and made.scopes == ["contacts:write", "payments:read"]
    page = http.get(r.headers["location"])
    assert "Created. Add the members and API users it is for." in page.text
    listing = http.get("/groups")
    row = listing.text[listing.text.index(f'<a href="/groups/{sales}">Sales</a>'):]
    row = row[:row.index("</tr>")]
    assert "The sales team" in row
    assert '<span class="chip">Contacts Edit</span>' in row and "Contacts View" not in row
    assert '<span class="chip">Payments View</span>' in row

    r = http.post("/groups", data={"csrf_token": token, "name": "Sales"})
    assert r.status_code == 409
    assert field_error(r.text, "name") == "Another group already has this name. Choose another."
    r = http.post(f"/groups/{sales}", data={"csrf_token": token, "name": "Sales EMEA",
                                            "description": "", "scopes": ["forms:read"]})
    assert r.status_code == 303 and r.headers["location"] == f"/groups/{sales}?done=saved"
    changed = keyplane.groups.get(SYSTEM, tenant.id, sales)
    assert (changed.name, changed.description, changed.scopes) == ("Sales EMEA", "",
                                                                   ["forms:read"])
    r = http.post(f"/groups/{sales}", data={"csrf_token": token, "name": "",
                                            "scopes": ["contacts:read"]})
    assert r.status_code == 422 and field_error(r.text, "name") == "Name must not be empty."
    assert keyplane.groups.get(SYSTEM, tenant.id, sales).scopes == ["forms:read"]
    # a management scope sent by hand is refused beside the grid
    r = http.post(f"/groups/{sales}", data={"csrf_token": token, "name": "Sales EMEA",
                                            "scopes": ["keys:write"]})
    assert r.status_code == 422 and "management scope" in field_error(r.text, "scopes")


def test_members_and_api_users_join_and_leave_and_their_keys_follow_at_once(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, verifier_key: str) -> None:
    robot, secret = robot_with_key(keyplane, tenant, ["contacts:read", "payments:read"])
    mia = add_member(keyplane, tenant.id, "mia@example.com")
    crm = keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM",
                                                     "scopes": ["contacts:write"]}).id
    start = keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids[0]
    assert verify(http, verifier_key, secret, ["payments:read"]) == "VALID"  # through Start
    signed_in(http, tenant.admin_email, tenant.admin_password)
    page = http.get(f"/groups/{crm}")
    assert "No members are in this group." in page.text
    assert f'<option value="{robot}">Robot (API user)</option>' in page.text
    assert f'<option value="{mia}">Mia (mia@example.com)</option>' in page.text
    token = form_token(http, f"/groups/{crm}")

    r = http.post(f"/groups/{crm}/members", data={"csrf_token": token, "principal_id": robot})
    assert r.status_code == 303 and r.headers["location"] == f"/groups/{crm}?done=added"
    assert keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids == sorted([crm, start])
    # out of Start, the key reaches only CRM's areas, from the next request
    keyplane.groups.remove_member(SYSTEM, tenant.id, start, robot)
    assert verify(http, verifier_key, secret, ["payments:read"]) == "INSUFFICIENT_SCOPE"
    assert verify(http, verifier_key, secret, ["contacts:read"]) == "VALID"
    r = http.post(f"/groups/{crm}/members", data={"csrf_token": token, "principal_id": mia})
    assert r.status_code == 303
    page = http.get(r.headers["location"])
    assert "Added. They reach only what their groups allow" in page.text
    people = page.text[page.text.index('id="people-title"'):page.text.index('id="robots-title"')]
    assert "Mia (mia@example.com)" in people and "Robot" not in people
    assert f'href="/groups/{crm}/members/{robot}/remove"' in page.text
    assert f'<option value="{robot}">' not in page.text  # already in it
    assert http.get("/groups").text.count("<td data-label=\"Members and API users\">2</td>") == 1
    # the member's own page names their groups
    assert f'<dd><a href="/groups/{crm}">CRM</a></dd>' in http.get(f"/members/{mia}").text

    r = http.post(f"/groups/{crm}/members", data={"csrf_token": token,
                                                  "principal_id": "svc_nope"})
    assert r.status_code == 422
    assert "that one no longer exists" in field_error(r.text, "principal_id")

    # removing asks first, and says that an API user leaving its only group reaches no data
    confirm = http.get(f"/groups/{crm}/members/{robot}/remove")
    assert confirm.status_code == 200
    assert "Remove Robot from CRM?" in confirm.text
    assert "This is their only group." in confirm.text and "reaches no data at all" in confirm.text
    # a member leaving their only group widens their access (to their role's)
    assert "widens their access" in http.get(f"/groups/{crm}/members/{mia}/remove").text
    assert keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids == [crm]  # asking only
    billing = keyplane.groups.create(SYSTEM, tenant.id, {"name": "Billing",
                                                         "scopes": ["payments:read"]}).id
    keyplane.groups.add_member(SYSTEM, tenant.id, billing, mia)
    assert "keeps the data areas of their other groups" in http.get(
        f"/groups/{crm}/members/{mia}/remove").text
    r = http.post(f"/groups/{crm}/members/{robot}/remove", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == f"/groups/{crm}?done=removed"
    assert keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids == []
    assert verify(http, verifier_key, secret, ["contacts:read"]) == "INSUFFICIENT_SCOPE"
    # not in it any more: nothing to remove
    assert http.get(f"/groups/{crm}/members/{robot}/remove").status_code == 404


def test_a_group_is_deleted_only_empty_and_after_confirming(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    mia = add_member(keyplane, tenant.id, "mia@example.com")
    crm = keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM",
                                                     "scopes": ["contacts:write"]}).id
    keyplane.groups.add_member(SYSTEM, tenant.id, crm, mia)
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, f"/groups/{crm}")
    confirm = http.get(f"/groups/{crm}/delete")
    assert confirm.status_code == 200
    assert "This group still has members." in confirm.text and "Mia" in confirm.text
    assert f'action="/groups/{crm}/delete"' not in confirm.text
    r = http.post(f"/groups/{crm}/delete", data={"csrf_token": token})
    assert r.status_code == 409 and "This group still has members." in r.text
    assert keyplane.groups.get(SYSTEM, tenant.id, crm).name == "CRM"

    keyplane.groups.remove_member(SYSTEM, tenant.id, crm, mia)
    confirm = http.get(f"/groups/{crm}/delete")
    assert "Deleting is immediate and cannot be undone." in confirm.text
    assert f'action="/groups/{crm}/delete"' in confirm.text
    r = http.post(f"/groups/{crm}/delete", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/groups?done=deleted"
    assert "CRM" not in http.get("/groups").text
    assert http.get(f"/groups/{crm}").status_code == 404


@pytest.mark.parametrize("role", ["member", "read_only"])
def test_a_member_sees_groups_read_only(http: httpx2.Client, tenant: Tenant,
                                        keyplane: Keyplane, role: str) -> None:
    robot, _ = robot_with_key(keyplane, tenant, ["contacts:read"])
    crm = keyplane.groups.create(SYSTEM, tenant.id, {"name": "CRM",
                                                     "scopes": ["contacts:write"]}).id
    keyplane.groups.add_member(SYSTEM, tenant.id, crm, robot)
    add_member(keyplane, tenant.id, "mia@example.com", role=role)
    signed_in(http, "mia@example.com", MEMBER_PASSWORD)
    listing = http.get("/groups")
    assert listing.status_code == 200 and f'<a href="/groups/{crm}">CRM</a>' in listing.text
    assert "Create group" not in listing.text
    assert "Only an administrator can change them." in listing.text
    page = http.get(f"/groups/{crm}")
    assert page.status_code == 200 and "Robot (API user)" in page.text
    for control in ("Save changes", "Add to group", "/remove", ">Delete<"):
        assert control not in page.text, control
    assert ticked(page.text, "contacts:write")
    assert page.text.count('name="scopes"') == page.text.count(' disabled')
    for path in ("/groups/new", f"/groups/{crm}/delete", f"/groups/{crm}/members/{robot}/remove"):
        assert http.get(path).status_code == 403, path
    token = form_token(http, "/groups")
    for path, data in (("/groups", {"name": "Sneaky"}),
                       (f"/groups/{crm}", {"name": "Renamed", "scopes": ["payments:write"]}),
                       (f"/groups/{crm}/members", {"principal_id": robot}),
                       (f"/groups/{crm}/members/{robot}/remove", {}),
                       (f"/groups/{crm}/delete", {})):
        r = http.post(path, data={"csrf_token": token, **data})
        assert r.status_code == 403 and "You cannot do this" in r.text, path
    group = keyplane.groups.get(SYSTEM, tenant.id, crm)
    assert group.name == "CRM" and group.scopes == ["contacts:write"]
    assert [g.name for g in keyplane.groups.list(SYSTEM, tenant.id)] == ["CRM", "Start"]
    assert crm in keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids


def test_another_tenants_groups_and_people_are_not_found_and_forms_need_csrf(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane) -> None:
    other = make_tenant(keyplane, "Globex")
    theirs = keyplane.groups.create(SYSTEM, other.id, {"name": "Their group",
                                                       "scopes": ["contacts:read"]}).id
    ours = keyplane.groups.create(SYSTEM, tenant.id, {"name": "Our group",
                                                      "scopes": ["contacts:read"]}).id
    their_robot = keyplane.principals.create(SYSTEM, other.id, PrincipalKind.SERVICE_ACCOUNT,
                                             {"name": "Their robot"}).id
    signed_in(http, tenant.admin_email, tenant.admin_password)
    token = form_token(http, "/groups")
    assert "Their group" not in http.get("/groups").text
    assert f'value="{their_robot}"' not in http.get(f"/groups/{ours}").text
    for path in (f"/groups/{theirs}", f"/groups/{theirs}/delete",
                 f"/groups/{theirs}/members/{other.admin_id}/remove"):
        assert http.get(path).status_code == 404, path
    for path, data in ((f"/groups/{theirs}", {"name": "Mine now"}),
                       (f"/groups/{theirs}/members", {"principal_id": tenant.admin_id}),
                       (f"/groups/{theirs}/members/{other.admin_id}/remove", {}),
                       (f"/groups/{theirs}/delete", {})):
        r = http.post(path, data={"csrf_token": token, **data})
        assert r.status_code == 404, path
    # their member or API user cannot be put in our group either
    r = http.post(f"/groups/{ours}/members", data={"csrf_token": token,
                                                   "principal_id": their_robot})
    assert r.status_code == 422
    assert keyplane.principals.get(SYSTEM, other.id, their_robot).group_ids == []
    assert keyplane.groups.get(SYSTEM, other.id, theirs).name == "Their group"
    for path, data in (("/groups", {"name": "Forged"}),
                       (f"/groups/{ours}", {"name": "Forged"}),
                       (f"/groups/{ours}/members", {"principal_id": tenant.admin_id}),
                       (f"/groups/{ours}/members/{tenant.admin_id}/remove", {}),
                       (f"/groups/{ours}/delete", {})):
        for forged in ({}, {"csrf_token": "forged-token"}):
            r = http.post(path, data={**forged, **data})
            assert r.status_code == 400 and "This form has expired" in r.text, path
    assert [g.name for g in keyplane.groups.list(SYSTEM, tenant.id)] == ["Our group"]
    assert keyplane.principals.get(SYSTEM, tenant.id, tenant.admin_id).group_ids == []


def test_with_the_policy_off_an_api_users_last_group_is_never_taken_away(
        http: httpx2.Client, tenant: Tenant, keyplane: Keyplane, verifier_key: str) -> None:
    robot, secret = robot_with_key(keyplane, tenant, ["contacts:read"])
    start = keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids[0]
    keyplane.tenants.update(SYSTEM, tenant.id, {"policy": {"api_users_need_group": False}})
    signed_in(http, tenant.admin_email, tenant.admin_password)
    confirm = http.get(f"/groups/{start}/members/{robot}/remove")
    assert "its last group cannot be taken away" in confirm.text
    with pytest.raises(Conflict) as refused:  # the rule is the service's, whoever asks
        keyplane.groups.remove_member(SYSTEM, tenant.id, start, robot)
    assert refused.value.field == "group_ids"
    assert keyplane.principals.get(SYSTEM, tenant.id, robot).group_ids == [start]
    assert verify(http, verifier_key, secret, ["contacts:read"]) == "VALID"
