"""The one failed-attempt policy: what is counted, per what key, up to which limit, and what
happens when the counts cannot be kept.

What is counted, and per what:

* **Failed credentials per client address** (``failed(kind, address)``): malformed or unknown
  bearer credentials (``"auth"``), guesses at ``/v1/verify`` (``"verify"``, against the end
  user's address) and failed client authentication or unknown codes at the OAuth endpoints
  (``"oauth"``). After ``limit`` in ``window`` seconds the address is refused until the window
  frees up; other addresses are untouched.
* **Failed sign-ins** per account (the email) and per client address, with their own limits
  (``KEYPLANE_SIGNIN_LIMIT_PER_ACCOUNT`` / ``_PER_IP``); checked before the password is.
* **Other counted attempts** with a limit of their caller's (``wait``/``count``/``reset``):
  wrong second-factor codes per member, password-reset requests, open sign-ups per address.

An address is always counted as its IPv6 /64 (one subscriber usually holds a whole /64, so a
guesser cannot rotate through it) and an IPv4-mapped IPv6 address as its IPv4 address.

The first refusal per window of an address (or account) is audited as
``excess_rate_limit_exceeded`` in a transaction of its own: refusals are not rolled back with
the request they refuse.

When the counts cannot be kept, the policy never fails open: guessing passwords or keys must
not speed up because Redis went away. The counter (``cache/ratelimit.py``) keeps counting in
this process's memory while Redis is unreachable (so N workers admit at most N times a limit,
and nobody is locked out by an outage), and a count that Redis refuses (a broken key) refuses
that one account or address for a window, while everyone else is counted as usual.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import time

from keyplane.core.attempts import AttemptCounter, CountFault, Limit
from keyplane.core.policy import Address
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services.context import Context

log = logging.getLogger("keyplane.throttle")

AUTH_FAILURES = "auth"  # bearer credentials at the management API
VERIFY_FAILURES = "verify"  # guesses at /v1/verify: per end-user address (body ``ip``)
OAUTH_FAILURES = "oauth"  # the client-authenticated OAuth endpoints
SIGNIN = "signin"  # failed sign-ins (members, operator staff, partner developers)
AUDITED = "excess_rate_limit_exceeded"


def oauth_guess(status: int, error: object) -> bool:
    """Whether an OAuth endpoint's answer counts as a failed attempt (RFC 7009 §5, RFC 7662
    §4): failed client authentication, or an unknown, used or expired code or refresh token,
    as bad bearer keys count at the API."""
    return status == 401 or (status == 400 and error == "invalid_grant")


def client_key(ip: Address | str) -> str:
    """What an address's attempts are counted against: the address, its /64 for IPv6 (one
    subscriber usually holds a whole /64), the IPv4 address inside an IPv4-mapped one. Text
    that is not an address is counted as it is."""
    address: Address
    if isinstance(ip, str):
        try:
            address = ipaddress.ip_address(ip.strip())
        except ValueError:
            return ip
    else:
        address = ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


class FailureThrottle:
    """The failed-attempt policy (see the module docstring). ``retry_after`` needs no I/O (the
    hot path's check); every other call may wait on the counter's store: call them from a
    thread."""

    MAX_TRACKED = 100_000

    def __init__(self, ctx: Context, counter: AttemptCounter, *, limit: int, window: int,
                 signin_per_account: Limit, signin_per_address: Limit) -> None:
        self.ctx = ctx
        self.counter = counter
        self.limit = limit
        self.window = window
        self._failures = Limit(limit, window, "fail")
        self.signin_per_account = Limit(signin_per_account.amount, signin_per_account.seconds,
                                        "signin-account")
        self.signin_per_address = Limit(signin_per_address.amount, signin_per_address.seconds,
                                        "signin-address")
        self._blocked: dict[tuple[str, str], float] = {}
        self.throttled: dict[str, int] = {}  # /metrics: attempts over a limit, by kind

    # -- failed credentials per address -----------------------------------------------------------

    def blocked_now(self) -> list[tuple[str, str]]:
        """The (kind, address) pairs this process refuses now."""
        now = time.monotonic()
        return [k for k, until in list(self._blocked.items()) if until > now]

    def retry_after(self, kind: str, ip: Address | None) -> int | None:
        """Seconds this address must wait, if this process knows it is refused (no I/O)."""
        if not self._blocked or ip is None:
            return None
        key = (kind, client_key(ip))
        until = self._blocked.get(key)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            self._blocked.pop(key, None)
            return None
        return max(1, math.ceil(left))

    def failed(self, kind: str, ip: Address | None, *,
               request_id: str | None = None) -> int | None:
        """Counts one failure of this address. Returns the seconds to wait when the address
        is now over the limit (this failure was the one too many), else ``None``."""
        if ip is None:
            return None
        who = client_key(ip)
        wait = self._hit(self._failures, kind, who)
        if wait is None:
            return None
        self._refused(kind, who, wait, self._failures, ip=str(ip), request_id=request_id)
        self._remember(kind, who, wait)
        return wait

    def _remember(self, kind: str, who: str, wait: int) -> None:
        if len(self._blocked) >= self.MAX_TRACKED:
            now = time.monotonic()
            self._blocked = {k: u for k, u in self._blocked.items() if u > now}
            if len(self._blocked) >= self.MAX_TRACKED:
                self._blocked = {}  # the shared counts still refuse them on their next failure
        self._blocked[(kind, who)] = time.monotonic() + wait

    # -- sign-in ----------------------------------------------------------------------------------

    def _signin_keys(self, email: str, ip: str | None) -> list[tuple[Limit, str]]:
        keys = [(self.signin_per_account, email.strip().lower())]
        if ip:
            keys.append((self.signin_per_address, client_key(ip)))
        return keys

    def signin_refused(self, email: str, ip: str | None, *,
                       request_id: str | None = None) -> tuple[int, int] | None:
        """Before a password is checked: ``(seconds to wait, the limit reached)`` when this
        account or address has used up its failed sign-ins, else ``None``."""
        for limit, who in self._signin_keys(email, ip):
            wait = self._peek(limit, SIGNIN, who)
            if wait is not None:
                self._refused(SIGNIN, who, wait, limit, ip=ip, request_id=request_id)
                return wait, limit.amount
        return None

    def signin_failed(self, email: str, ip: str | None) -> None:
        """Count a failed sign-in against the account and the address."""
        for limit, who in self._signin_keys(email, ip):
            self._hit(limit, SIGNIN, who)

    def signin_succeeded(self, email: str) -> None:
        """A right password: the account's failures are forgotten (its address's are not)."""
        self.reset(self.signin_per_account, SIGNIN, email.strip().lower())

    # -- other counted attempts (second-factor codes, reset requests, sign-ups) --------------------

    def wait(self, limit: Limit, kind: str, ident: str) -> int | None:
        """Seconds until ``ident`` may try again under ``limit``, or None when it may now."""
        return self._peek(limit, kind, ident)

    def count(self, limit: Limit, kind: str, ident: str) -> bool:
        """Count one attempt; False when it is over the limit (and was not counted)."""
        return self._hit(limit, kind, ident) is None

    def reset(self, limit: Limit, kind: str, ident: str) -> None:
        # a fault is logged by the counter; the count then runs out with its window
        with contextlib.suppress(CountFault):
            self.counter.clear(limit, kind, ident)

    # -- the rules shared by every kind -----------------------------------------------------------

    def _hit(self, limit: Limit, kind: str, who: str) -> int | None:
        try:
            return self.counter.hit(limit, kind, who)
        except CountFault:  # fail closed, for this one key alone
            return limit.seconds

    def _peek(self, limit: Limit, kind: str, who: str) -> int | None:
        try:
            return self.counter.peek(limit, kind, who)
        except CountFault:
            return limit.seconds

    def _refused(self, kind: str, who: str, wait: int, limit: Limit, *, ip: str | None,
                 request_id: str | None) -> None:
        """An attempt was refused: counted for /metrics, and audited once per window."""
        self.throttled[kind] = self.throttled.get(kind, 0) + 1
        first = self._hit(Limit(1, limit.seconds, "fail-audit"), kind, who) is None
        if first:
            self._audit(kind, who, limit, ip=ip, request_id=request_id, retry_after=wait)

    def _audit(self, kind: str, who: str, limit: Limit, *, ip: str | None,
               request_id: str | None, retry_after: int) -> None:
        log.warning("too many failed attempts (%s) from %s; refusing it for now", kind, who)
        caller = Caller(kind=CredentialKind.OPERATOR_KEY, scopes=frozenset(), ip=ip,
                        request_id=request_id)
        counted = "account" if limit.namespace == "signin-account" else "address"
        try:
            with self.ctx.uow() as uow:
                self.ctx.audit(uow, caller, AUDITED, who, tenant_id=None, outcome="denied",
                               scope=kind, counted_per=counted, limit=limit.amount,
                               window_seconds=limit.seconds, retry_after=retry_after)
                uow.commit()
        except Exception:  # the refusal stands even when the audit log cannot be written
            log.exception("could not audit %s", AUDITED)
