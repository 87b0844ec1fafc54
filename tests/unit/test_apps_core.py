"""Connected apps' pure rules: redirect URIs, exact matching, credential prefixes, app status,
scopes an app may ask for and the effective scopes of a token."""

from __future__ import annotations

import re

import pytest

from keyplane.core import tokens
from keyplane.core.apps import (
    AppStatus,
    CredentialPrefixes,
    app_scopes,
    effective_scopes,
    redirect_matches,
    redirect_uris,
    scope_list,
    transition,
    web_uri,
)
from keyplane.core.errors import Conflict, ValidationError
from keyplane.core.scopes import Catalogue

CAT = Catalogue()
REGISTERED = ["https://app.example/cb"]


@pytest.mark.parametrize("uri", [
    "https://app.example/cb",
    "https://app.example:8443/oauth/callback?tenant=1",
    "http://127.0.0.1:53122/cb",
    "http://[::1]/cb",
    "http://localhost:3000/cb",
])
def test_accepted_redirect_uris_are_kept_byte_for_byte(uri: str) -> None:
    assert redirect_uris([uri]) == [uri]


@pytest.mark.parametrize(("uri", "why"), [
    ("http://app.example/cb", "https"),
    ("http://10.0.0.1/cb", "https"),
    ("https://app.example@evil.example/cb", "user information"),
    ("https://app.example/cb#frag", "fragment"),
    ("https://app.example/c b", "spaces"),
    ("/cb", "absolute"),
    ("javascript:alert(1)", "absolute"),
    ("https:///cb", "absolute"),
    ("https://app.example:99999/cb", "not a valid URI"),
    ("custom-scheme://cb", "absolute"),
    ("", "non-empty"),
])
def test_refused_redirect_uris_name_the_field(uri: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        redirect_uris([uri])
    assert info.value.field == "redirect_uris"
    assert why in info.value.message


def test_redirect_uri_list_limits() -> None:
    with pytest.raises(ValidationError):
        redirect_uris([])
    with pytest.raises(ValidationError):
        redirect_uris("https://app.example/cb")
    with pytest.raises(ValidationError):
        redirect_uris([f"https://app.example/{i}" for i in range(11)])
    assert redirect_uris(["https://a.example/", "https://a.example/"]) == ["https://a.example/"]


@pytest.mark.parametrize("presented", [
    "https://app.example/cb/",  # trailing slash
    "https://app.example/CB",  # case in the path
    "https://APP.example/cb",  # case in the host
    "https://app.example/cb?x=1",  # added query
    "https://app.example/cb/extra",  # extra path segment
    "http://app.example/cb",  # http
    "https://app.example:444/cb",  # other port
    "https://app.example:443/cb",  # explicit default port
    "https://sub.app.example/cb",  # subdomain
    "https://app.example@evil.example/cb",  # userinfo trick
    "https://app.example/cb#x",  # fragment
    "https://app.example/%63b",  # percent-encoding variant
    "https://app.example/cb%2F",
    "https://app.example/cb\x00",
    "",
    None,
])
def test_redirect_match_is_exact(presented: str | None) -> None:
    assert redirect_matches(REGISTERED, presented) is False


def test_redirect_match_accepts_the_registered_string() -> None:
    assert redirect_matches([*REGISTERED, "http://127.0.0.1:9/cb"], "http://127.0.0.1:9/cb")


def test_each_credential_type_has_its_own_prefix_and_regex() -> None:
    p = CredentialPrefixes.derive("kp")
    kinds = [p.key, p.access_token, p.refresh_token, p.client_secret, p.code]
    assert kinds == ["kp", "kpat", "kprt", "kpcs", "kpac"]
    samples = {k: tokens.generate(k) for k in kinds}
    for kind in kinds:
        pattern = re.compile(rf"^{kind}_[0-9A-Za-z]{{38}}$")
        matches = [k for k, raw in samples.items() if pattern.match(raw)]
        assert matches == [kind]
        assert tokens.parse(samples[kind], [kind]) is not None
        assert all(tokens.parse(samples[o], [kind]) is None for o in kinds if o != kind)


def test_long_key_prefixes_are_truncated_and_never_collide() -> None:
    p = CredentialPrefixes.derive("abcdefghijklmnop")
    assert p.access_token == "abcdefghijklmnat" and len(p.access_token) == 16
    with pytest.raises(ValueError, match="shorter"):
        CredentialPrefixes.derive("abcdefghijklmnat")


@pytest.mark.parametrize(("status", "action", "after"), [
    (AppStatus.PENDING, "approve", AppStatus.APPROVED),
    (AppStatus.PENDING, "reject", AppStatus.REJECTED),
    (AppStatus.APPROVED, "suspend", AppStatus.SUSPENDED),
    (AppStatus.SUSPENDED, "approve", AppStatus.APPROVED),
])
def test_allowed_transitions(status: AppStatus, action: str, after: AppStatus) -> None:
    assert transition(status, action) is after


@pytest.mark.parametrize(("status", "action"), [
    (AppStatus.REJECTED, "approve"),
    (AppStatus.APPROVED, "approve"),
    (AppStatus.APPROVED, "reject"),
    (AppStatus.PENDING, "suspend"),
    (AppStatus.REJECTED, "suspend"),
])
def test_refused_transitions_say_why(status: AppStatus, action: str) -> None:
    with pytest.raises(Conflict) as info:
        transition(status, action)
    assert status.value in info.value.message and info.value.code == "invalid_status"


def test_apps_ask_only_for_known_data_scopes() -> None:
    assert app_scopes(["payments:read", "contacts:write"], CAT) == [
        "contacts:write", "payments:read"]
    for bad, why in [(["keys:write"], "management"), (["platform:read"], "management"),
                     (["nope:read"], "unknown"), ([], "non-empty"), ("contacts:read", "list"),
                     (["contacts:read"] * 201, "at most 200")]:
        with pytest.raises(ValidationError) as info:
            app_scopes(bad, CAT)
        assert info.value.field == "scopes" and why in info.value.message


def test_scope_parameter_parsing() -> None:
    assert scope_list("contacts:read  payments:read contacts:read") == [
        "contacts:read", "payments:read"]
    assert scope_list(None) == [] and scope_list("") == []


def test_effective_scopes_are_the_token_within_the_grant_within_the_admins_rights() -> None:
    rights = frozenset({"contacts:read", "contacts:write", "payments:read"})
    assert effective_scopes(["contacts:write"], ["contacts:write", "payments:read"], rights) == {
        "contacts:write", "contacts:read"}
    # the admin lost contacts:write: the token narrows with them
    assert effective_scopes(["contacts:write"], ["contacts:write"],
                            frozenset({"contacts:read"})) == {"contacts:read"}
    assert effective_scopes(["payments:write"], ["contacts:read"], rights) == frozenset()


def test_web_uri_query_rule() -> None:
    with pytest.raises(ValidationError):
        web_uri("https://a.example/?q=1", "homepage", allow_query=False)
    assert web_uri("https://a.example/", "homepage", allow_query=False) == "https://a.example/"
