"""Console accounts outside tenants: operator staff and partner developers.

* Operator staff are created by the operator (``keyplane operators create``). Signed in, they
  act as the operator (``CredentialKind.OPERATOR_SESSION`` with ``platform:write``) through the
  same services as the operator's key, and no key is minted for them.
* Partner developers sign up at ``/partners/signup`` as ``KEYPLANE_PARTNER_SIGNUP`` allows:
  ``invite`` (the default: only with a link the operator's staff made; the link is signed,
  expires, and is spent once an account with its email exists), ``open`` (anyone may have the
  same kind of link mailed to an address they read: :meth:`AccountService.request_signup`; the
  answer, and the time it takes, is the same whether or not the address has an account, which
  is mailed a note to sign in instead) or ``closed``.
  A developer holds no management right (``CredentialKind.DEVELOPER_SESSION``): it registers
  apps, which stay pending until the operator approves them, and sees only its own.

Both sign in through the same ``/signin`` form as members, with the same throttle: a password
is tried against the accounts with that email first (argon2 each, and one hash even when there
is none), then against the memberships. The session cookie holds a random token; only its
keyed digest is stored, as for members.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyplane.core import ids
from keyplane.core.accounts import (
    Account,
    AccountKind,
    AccountRepos,
    AccountSession,
    PartnerSignup,
)
from keyplane.core.attempts import Limit
from keyplane.core.errors import (
    AuthenticationError,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from keyplane.core.model import Page
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services import validate as v
from keyplane.services.context import Context
from keyplane.services.passwords import MAX_PASSWORD, MIN_PASSWORD, hash_password, verify_password
from keyplane.services.sessions import SESSION_TOKEN_BYTES
from keyplane.services.throttle import FailureThrottle, client_key

#: open sign-up: links mailed per client address, and per email address (nobody floods
#: someone else's inbox), in the throttle's shared store
SIGNUPS_PER_IP = Limit(5, 3600, "signup")
SIGNUPS_PER_ADDRESS = Limit(3, 3600, "signup")
SIGNUP_LINK_LIFETIME = timedelta(hours=24)  # a link someone asked for, not the staff's

Repos = Callable[[UnitOfWork], AccountRepos]
TOKEN_PREFIX = "a."  # tells an account's session cookie from a member's at a glance
ACCOUNT_FIELDS = ("email", "name", "password")
SIGNUP_FIELDS = ("email", "name", "password", "invitation")


@dataclass(frozen=True)
class AccountSignedIn:
    """A live session of operator staff or a partner developer."""

    session: AccountSession
    account: Account

    @property
    def is_operator(self) -> bool:
        return self.account.kind is AccountKind.OPERATOR


@dataclass(frozen=True)
class Invitation:
    """A link for one partner developer to sign up; ``token`` goes in the URL."""

    email: str
    token: str
    expires_at: datetime
    mailed: bool


def _password(value: Any) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise ValidationError(
            f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long",
            field="password")
    return value


class AccountService:
    def __init__(self, ctx: Context, repos: Repos, throttle: FailureThrottle, *,
                 lifetime: timedelta, signup: PartnerSignup, invite_lifetime: timedelta,
                 base_url: str) -> None:
        self.ctx = ctx
        self.repos = repos
        self.throttle = throttle
        self.lifetime = lifetime
        self.signup = signup
        self.invite_lifetime = invite_lifetime
        self.base_url = base_url

    # -- accounts ----------------------------------------------------------------------------

    def create(self, caller: Caller, kind: AccountKind, body: dict[str, Any]) -> Account:
        """A new operator staff (or developer) account, made by the operator."""
        caller.require("platform:write")
        v.only_fields(body, ACCOUNT_FIELDS)
        return self._add(caller, kind, body)

    def _add(self, caller: Caller, kind: AccountKind, body: dict[str, Any]) -> Account:
        email = v.email(body.get("email"))
        name = v.text(body.get("name"), "name", max_len=v.MAX_NAME, required=False)
        hashed = hash_password(_password(body.get("password")))
        account = Account(id=ids.new_id("acc"), kind=kind, email=email,
                          name=name or email.split("@")[0], password_hash=hashed,
                          created_at=self.ctx.clock.now(), created_by=caller.actor)
        with self.ctx.uow() as uow:
            repos = self.repos(uow)
            if repos.accounts.by_email(kind, email) is not None:
                what = "operator staff" if kind is AccountKind.OPERATOR else "developer"
                raise Conflict(f"email: a {what} account with this email exists already; "
                               "sign in instead", field="email", code="account_exists")
            repos.accounts.add(account)
            self.ctx.audit(uow, caller, f"account.{kind.value}_created", account.id,
                           tenant_id=None, email=email)
            uow.commit()
        return account

    def list(self, caller: Caller, kind: AccountKind, *, limit: int = 50,
             cursor: str | None = None) -> Page[Account]:
        caller.require("platform:read")
        with self.ctx.uow(readonly=True) as uow:
            return self.repos(uow).accounts.page(kind, limit=limit, cursor=cursor)

    def set_enabled(self, caller: Caller, kind: AccountKind, email: Any,
                    enabled: bool) -> Account:
        """Disable (or enable again) an account; disabling ends its sessions at once."""
        caller.require("platform:write")
        address = v.email(email)
        with self.ctx.uow() as uow:
            repos = self.repos(uow)
            account = repos.accounts.by_email(kind, address)
            if account is None:
                raise NotFound("email: no such account", field="email")
            account.enabled = enabled
            repos.accounts.update(account)
            ended = 0 if enabled else repos.sessions.revoke_for_account(
                account.id, self.ctx.clock.now())
            self.ctx.audit(uow, caller, "account.enabled" if enabled else "account.disabled",
                           account.id, tenant_id=None, sessions_ended=ended)
            uow.commit()
        return account

    def get(self, caller: Caller, account_id: str) -> Account:
        caller.require("platform:read")
        with self.ctx.uow(readonly=True) as uow:
            found = self.repos(uow).accounts.get(account_id)
        if found is None:
            raise NotFound("no such account")
        return found

    # -- partner developers signing up -------------------------------------------------------

    def invite(self, caller: Caller, email: Any) -> Invitation:
        """A sign-up link for one partner developer, shown to the staff member who made it
        and mailed when ``KEYPLANE_SMTP_URL`` is set."""
        caller.require("platform:write")
        if self.signup is PartnerSignup.CLOSED:
            raise Conflict("partner sign-up is closed (KEYPLANE_PARTNER_SIGNUP=closed)",
                           code="signup_closed")
        address = v.email(email)
        token, link, expires = self._signup_link(address, self.invite_lifetime)
        with self.ctx.uow() as uow:
            if self.repos(uow).accounts.by_email(AccountKind.DEVELOPER, address) is not None:
                raise Conflict("email: this developer has an account already",
                               field="email", code="account_exists")
            self.ctx.audit(uow, caller, "account.developer_invited", address, tenant_id=None)
            mailed = self.ctx.mail_after_commit(
                uow, [address], "You are invited to register your app",
                "You are invited to create a partner developer account and register your app "
                f"for approval.\n\nOpen this link to sign up (it works until "
                f"{expires:%Y-%m-%d %H:%M} UTC):\n\n{link}\n")
            uow.commit()
        return Invitation(email=address, token=token, expires_at=expires, mailed=mailed)

    def _signup_link(self, address: str, lifetime: timedelta) -> tuple[str, str, datetime]:
        """A signed sign-up link for ``address``: (token, link, expiry)."""
        expires = self.ctx.clock.now() + lifetime
        stamp = int(expires.timestamp())
        encoded = base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")
        token = f"{stamp}.{encoded}.{self._invite_mac(stamp, address)}"
        return token, f"{self.base_url}/partners/signup?invitation={token}", expires

    def request_signup(self, email: Any, *, ip: str | None) -> str:
        """Open sign-up's first step: check the address and the limits (counted per address
        and per client address whether or not an account exists, so the limits say nothing
        either). Returns the address for :meth:`send_signup`, which the caller runs after
        answering, so the answer takes as long whether or not there is an account."""
        if self.signup is not PartnerSignup.OPEN:
            raise PermissionDenied("partner sign-up is by invitation; ask the operator for a "
                                   "link", code="invitation_required")
        address = v.email(email)
        for limit, kind, ident in ((SIGNUPS_PER_ADDRESS, "signup-address", address),
                                   (SIGNUPS_PER_IP, "signup", client_key(ip) if ip else "")):
            if ident and not self.throttle.count(limit, kind, ident):
                raise RateLimited("too many sign-up requests; try again later",
                                  retry_after=self.throttle.wait(limit, kind, ident) or 60,
                                  limit=limit.amount, remaining=0)
        return address

    def send_signup(self, address: str, *, ip: str | None,
                    request_id: str | None = None) -> None:
        """Mail ``address`` a sign-up link, or, when a developer account has it already, a
        note to sign in instead."""
        actor = Caller(kind=CredentialKind.DEVELOPER_SESSION, scopes=frozenset(), ip=ip,
                       request_id=request_id, name="partner-signup")
        with self.ctx.uow() as uow:
            exists = self.repos(uow).accounts.by_email(AccountKind.DEVELOPER, address)
            if exists is not None:
                subject = "You already have a partner developer account"
                text = ("Someone (we hope you) asked to sign up as a partner developer with "
                        f"this address, which has an account already.\n\nSign in at "
                        f"{self.base_url}/signin\n\nIf you did not ask, ignore this email.\n")
            else:
                _token, link, expires = self._signup_link(address, SIGNUP_LINK_LIFETIME)
                subject = "Finish creating your partner developer account"
                text = ("Someone (we hope you) asked to sign up as a partner developer with "
                        f"this address.\n\nOpen this link to choose your password (it works "
                        f"until {expires:%Y-%m-%d %H:%M} UTC):\n\n{link}\n\n"
                        "If you did not ask, ignore this email: nothing is created.\n")
            self.ctx.audit(uow, actor, "account.developer_signup_requested", address,
                           tenant_id=None, account_exists=exists is not None)
            self.ctx.mail_after_commit(uow, [address], subject, text)
            uow.commit()

    def _invite_mac(self, stamp: int, address: str) -> str:
        return self.ctx.hasher.digest(f"partner-invitation:{stamp}:{address}")

    def invited_email(self, token: Any) -> str:
        """The email an invitation is for, or an error when it is forged or expired."""
        bad = AuthenticationError("this invitation link is not valid or has expired; ask for "
                                  "a new one", field="invitation", code="bad_invitation")
        if not isinstance(token, str) or len(token) > 1000 or token.count(".") != 2:
            raise bad
        stamp_text, encoded, mac = token.split(".")
        try:
            address = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise bad from None
        if not stamp_text.isdigit() or not hmac.compare_digest(
                self._invite_mac(int(stamp_text), address), mac):
            raise bad
        if int(stamp_text) <= self.ctx.clock.now().timestamp():
            raise bad
        return address

    def sign_up(self, body: dict[str, Any], *, ip: str | None,
                request_id: str | None = None) -> tuple[str, AccountSignedIn]:
        """A new partner developer account, signed in at once."""
        v.only_fields(body, SIGNUP_FIELDS)
        if self.signup is PartnerSignup.CLOSED:
            raise PermissionDenied("partner sign-up is closed; ask the operator for access",
                                   code="signup_closed")
        fields = {k: body.get(k) for k in ACCOUNT_FIELDS}
        # every account proves its email with a link: the staff's invitation, or (open
        # sign-up) the one request_signup mailed
        if not body.get("invitation"):
            raise PermissionDenied(
                "open sign-up mails you a link first: ask for one with your email"
                if self.signup is PartnerSignup.OPEN else
                "partner sign-up is by invitation; ask the operator for a link",
                code="invitation_required")
        invited = self.invited_email(body.get("invitation"))
        given = body.get("email")
        if given and (not isinstance(given, str) or given.strip().lower() != invited):
            raise ValidationError("email: this invitation is for another address",
                                  field="email")
        fields["email"] = invited
        actor = Caller(kind=CredentialKind.DEVELOPER_SESSION, scopes=frozenset(), ip=ip,
                       request_id=request_id, name="partner-signup")
        account = self._add(actor, AccountKind.DEVELOPER, fields)
        return self._open(account, ip=ip, request_id=request_id)

    # -- signing in ---------------------------------------------------------------------------

    def sign_in(self, email: Any, password: Any, *, ip: str | None,
                request_id: str | None = None) -> tuple[str, AccountSignedIn] | None:
        """A session for the operator staff or developer account this password opens, or
        None (then the memberships are tried, which count a failure if nothing matches)."""
        if not isinstance(email, str) or not isinstance(password, str) or not password \
                or len(password) > MAX_PASSWORD:
            return None
        try:
            address = v.email(email)
        except ValidationError:
            return None
        hit = self.throttle.signin_refused(address, ip, request_id=request_id)
        if hit is not None:
            raise RateLimited("too many failed sign-ins; try again later", retry_after=hit[0],
                              limit=hit[1], remaining=0)
        with self.ctx.uow(readonly=True) as uow:
            found = self.repos(uow).accounts.with_email(address)
        matched = None
        for account in found:  # every hash is checked: the time does not say which matched
            if verify_password(password, account.password_hash) and account.enabled \
                    and matched is None:
                matched = account
        if not found:
            verify_password(password, None)  # the same cost with or without an account
        if matched is None:
            return None
        self.throttle.signin_succeeded(address)
        return self._open(matched, ip=ip, request_id=request_id)

    def _open(self, account: Account, *, ip: str | None,
              request_id: str | None) -> tuple[str, AccountSignedIn]:
        raw = TOKEN_PREFIX + secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self.ctx.clock.now()
        session = AccountSession(id=ids.new_id("ses"), digest=self.ctx.hasher.digest(raw),
                                 pepper_id=self.ctx.hasher.current.id, account_id=account.id,
                                 created_at=now, expires_at=now + self.lifetime, ip=ip)
        signed_in = AccountSignedIn(session=session, account=account)
        with self.ctx.uow() as uow:
            self.repos(uow).sessions.add(session)
            self.ctx.audit(uow, self.caller(signed_in, ip=ip, request_id=request_id),
                           "session.signed_in", session.id, tenant_id=None)
            uow.commit()
        return raw, signed_in

    def resolve(self, raw: str | None) -> AccountSignedIn | None:
        """The live account session behind a cookie value, or None."""
        if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 100:
            return None
        now = self.ctx.clock.now()
        with self.ctx.uow(readonly=True) as uow:
            repos = self.repos(uow)
            session = None
            for _pid, digest in self.ctx.hasher.candidates(raw):
                found = repos.sessions.find(digest)
                if found is not None and hmac.compare_digest(found.digest, digest):
                    session = found
                    break
            if session is None or session.revoked_at is not None or now >= session.expires_at:
                return None
            account = repos.accounts.get(session.account_id)
        if account is None or not account.enabled:
            return None
        return AccountSignedIn(session=session, account=account)

    def sign_out(self, signed_in: AccountSignedIn, *, ip: str | None = None) -> None:
        with self.ctx.uow() as uow:
            session = signed_in.session
            session.revoked_at = self.ctx.clock.now()
            self.repos(uow).sessions.update(session)
            self.ctx.audit(uow, self.caller(signed_in, ip=ip), "session.signed_out", session.id,
                           tenant_id=None)
            uow.commit()

    def caller(self, signed_in: AccountSignedIn, *, ip: str | None = None,
               request_id: str | None = None) -> Caller:
        """Operator staff act as the operator (``platform:write``, never ``keys:verify``); a
        partner developer holds no management right."""
        account = signed_in.account
        if account.kind is AccountKind.OPERATOR:
            return Caller(kind=CredentialKind.OPERATOR_SESSION,
                          scopes=frozenset({"platform:write"}), account_id=account.id, ip=ip,
                          request_id=request_id, session_id=signed_in.session.id)
        return Caller(kind=CredentialKind.DEVELOPER_SESSION, scopes=frozenset(),
                      account_id=account.id, ip=ip, request_id=request_id,
                      session_id=signed_in.session.id)
