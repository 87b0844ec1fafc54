"""Builds the connected-app services from settings and hooks them into the verify path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from keyplane.core.accounts import PartnerSignup
from keyplane.core.apps import CredentialPrefixes
from keyplane.peppers import load_peppers
from keyplane.sealing import PepperSealer
from keyplane.services.accounts import AccountService
from keyplane.services.apps import AppService
from keyplane.services.connections import CONNECTION_ID_PREFIX, ConnectionService, Lifetimes
from keyplane.services.links import LinkService
from keyplane.services.sessions import SessionService
from keyplane.services.two_factor import TwoFactorService
from keyplane.storage.sql.account_repositories import account_repos
from keyplane.storage.sql.oauth_repositories import connected_repos
from keyplane.storage.sql.sign_in import sign_in_repos

if TYPE_CHECKING:
    from keyplane.bootstrap import Keyplane

EXTRA = "connected_apps"


@dataclass
class ConnectedApps:
    prefixes: CredentialPrefixes
    apps: AppService
    connections: ConnectionService
    sessions: SessionService
    two_factor: TwoFactorService  # TOTP second factor and recovery codes
    links: LinkService  # invitations and password resets (one-time links)
    issuer: str  # the RFC 8414 issuer: settings.base_url, byte for byte
    accounts: AccountService  # operator staff and partner developers (console accounts)


def install(kp: Keyplane) -> ConnectedApps:
    """Create the services, register access tokens with the verifier (same path as keys) and
    connection usage with the usage recorder."""
    s = kp.settings
    prefixes = CredentialPrefixes.derive(s.key_prefix)
    lifetimes = Lifetimes(access_token=timedelta(seconds=s.oauth_access_token_seconds),
                          code=timedelta(seconds=s.oauth_code_seconds),
                          refresh_family=timedelta(days=s.oauth_refresh_token_days))
    issuer = s.base_url
    connections = ConnectionService(kp.ctx, connected_repos, prefixes, lifetimes,
                                    tokens_require_tls=issuer.startswith("https://"))
    throttle = kp.throttle  # the one failed-attempt policy
    two_factor = TwoFactorService(kp.ctx, sign_in_repos, PepperSealer(load_peppers(s)),
                                  throttle)
    out = ConnectedApps(
        prefixes=prefixes,
        apps=AppService(kp.ctx, connected_repos, prefixes),
        connections=connections,
        sessions=SessionService(kp.ctx, connected_repos, throttle,
                                lifetime=timedelta(seconds=s.session_lifetime_seconds),
                                second_factor=two_factor),
        two_factor=two_factor,
        links=LinkService(kp.ctx, sign_in_repos, connected_repos, throttle, base_url=issuer),
        issuer=issuer,
        accounts=AccountService(kp.ctx, account_repos, throttle,
                                lifetime=timedelta(seconds=s.session_lifetime_seconds),
                                signup=PartnerSignup(s.partner_signup),
                                invite_lifetime=timedelta(days=s.partner_invite_days),
                                base_url=issuer),
    )
    kp.verifier.register(prefixes.access_token, connections.load_access_token)
    kp.usage.sinks.append(connections.record_usage)
    kp.usage_reports.owners[CONNECTION_ID_PREFIX] = connections.owner_of
    kp.extras[EXTRA] = out
    return out


def connected(kp: Keyplane) -> ConnectedApps:
    """The connected-app services of a built Keyplane."""
    found = kp.extras.get(EXTRA)
    if not isinstance(found, ConnectedApps):
        found = install(kp)
    return found
