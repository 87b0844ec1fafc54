"""The consent and authorisation steps of connected apps, as rules and types free of any web
framework and of Authlib.

Authlib does the OAuth protocol (``keyplane.oauth.server``); each hook it calls that reads or
writes Keyplane's records is a step of :class:`~keyplane.services.connections.ConnectionService`
run inside an :class:`OAuthStep`: the one unit of work of one OAuth request, opened and
committed by :meth:`ConnectionService.transaction`. The consent page's rules (which scopes an
admin may grant, what a valid decision is) are here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from keyplane.core.apps import App, ConnectedRepos
from keyplane.core.model import Principal, Tenant
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, CredentialKind

SUSPENDED = ("This app is suspended by the Keyplane operator: it can neither start a sign-in "
             "nor get tokens until it is reinstated.")


class GrantRefused(Exception):
    """The code or refresh token cannot be used (OAuth's ``invalid_grant``); the message says
    why, for the client."""


class ClientSuspended(Exception):
    """The app is suspended by the operator (OAuth's ``invalid_client``, said plainly)."""


@dataclass
class Member:
    """The resource owner: a signed-in tenant admin."""

    principal: Principal
    tenant: Tenant

    def get_user_id(self) -> str:  # what Authlib asks of a user
        return self.principal.id


@dataclass(frozen=True)
class AppActor(Caller):
    """A partner app acting at the token endpoint, as it appears in the audit log."""

    @property
    def actor(self) -> str:
        return f"app:{self.key_id}"


@dataclass
class OAuthStep:
    """One OAuth request's unit of work, and who acts in it as the audit log records them."""

    uow: UnitOfWork
    repos: ConnectedRepos
    ip: str | None = None
    request_id: str | None = None
    user_agent: str | None = None  # the client's, first 200 characters
    session_id: str | None = None  # the admin's console session, at the consent page

    def member_caller(self, member: Member) -> Caller:
        return Caller(kind=CredentialKind.SESSION, scopes=frozenset(),
                      tenant_id=member.tenant.id, principal_id=member.principal.id,
                      ip=self.ip, request_id=self.request_id, user_agent=self.user_agent,
                      session_id=self.session_id)

    def app_caller(self, app: App) -> Caller:
        return AppActor(kind=CredentialKind.ACCESS_TOKEN, scopes=frozenset(), key_id=app.id,
                        ip=self.ip, request_id=self.request_id, user_agent=self.user_agent,
                        via=f"oauth_client:{app.client_id}")

    def system_caller(self) -> Caller:
        return Caller(kind=CredentialKind.OPERATOR_KEY, scopes=frozenset(), ip=self.ip,
                      request_id=self.request_id, user_agent=self.user_agent)


@dataclass(frozen=True)
class ScopeOffer:
    name: str
    description: str
    holdable: bool  # the admin holds it, so may grant it


@dataclass(frozen=True)
class ConsentOffer:
    """What the consent page offers an admin: the requested scopes, those they may grant,
    and how long what they grant lasts."""

    scopes: list[ScopeOffer]
    access_minutes: int
    grant_days: int

    @property
    def holdable(self) -> list[str]:
        return [s.name for s in self.scopes if s.holdable]


class Refusal(StrEnum):
    """Why a submitted consent form is not a decision."""

    TAMPERED = "tampered"  # no allow/deny, or a scope the page did not offer
    NOTHING_CHOSEN = "nothing_chosen"  # allow, without a single scope


def check_decision(offer: ConsentOffer, decision: object,
                   chosen: Sequence[str]) -> Refusal | None:
    """The rule of the consent form: allow (with at least one offered scope) or deny."""
    if decision not in ("allow", "deny") or any(s not in offer.holdable for s in chosen):
        return Refusal.TAMPERED
    if decision == "allow" and not chosen:
        return Refusal.NOTHING_CHOSEN
    return None
