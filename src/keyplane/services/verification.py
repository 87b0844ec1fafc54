"""May this request pass? Every rule of it, in one use case.

``VerifyService`` answers ``POST /v1/verify`` and authenticates the bearer credential of every
other call. Its steps, in order:

1. **The caller.** An address blocked for presenting bad credentials is refused (429); no
   credential is 401; the credential is verified (its use counted); a guess (malformed or
   unknown) is counted against the address (AUTH_FAILURES), then refused like any credential
   that is not valid (web/errors.py's 401, 403 or 429).
2. **``keys:verify``**, then the request: ``ip`` must be an address (422).
3. **The failure throttle** of /v1/verify (VERIFY_FAILURES), per end-user address (``ip``) or
   else per caller address: a blocked address gets RATE_LIMITED, whatever key it presents.
4. **The key**, verified with the required scopes, address and TLS (its use counted).
5. **Tenant isolation.** A tenant's verifier never learns about another tenant's key, and a
   key of another tenant than the Location ID beside it is unknown: both are NOT_FOUND.
6. **Guesses** (MALFORMED, NOT_FOUND) are counted against the address; over the limit, the
   answer is RATE_LIMITED.
7. **Reuse.** The answer may be given again for the same request (``remember`` /
   ``remembered``) unless it moves a counter (a rate limit or a usage quota on either
   credential) or is a guess; a repeat is refused past either credential's expiry, after any
   change to either, or for an address the throttle now blocks, and still counts both uses.

The other questions of the same kind go through the same steps:

- ``answer_proxy`` (``/v1/forward-auth``): a trusted reverse proxy asks about its client's key;
  the proxy stands where ``/v1/verify``'s caller does (it is trusted by its address, so step 1
  is the adapter's), the key is used from the client's address and TLS. Steps 3-7.
- ``identify`` (``POST /v1/events``): whose live key does a request name? Steps 3, 5 and 6,
  counted like a guess at ``/v1/verify``.
- ``still_allowed`` (an open ``/v1/changes`` stream): step 1 again, and ``keys:verify``.

``answer_if_cached`` and ``authenticate_if_cached`` never block (no database, no Redis): they
return ``None`` when a step needs I/O, and ``answer`` / ``authenticate`` (from a thread) finish
the request. A ``Peer`` is made once per HTTP request and remembers what was already verified
and counted, so a request handed from the event loop to a thread (or from the fast path to the
route) is never counted twice.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from keyplane.core.decisions import Code, Denied
from keyplane.core.errors import AuthenticationError, KeyplaneError, RateLimited, ValidationError
from keyplane.core.policy import Address, parse_address
from keyplane.core.rights import Caller
from keyplane.services.auth import caller_from
from keyplane.services.throttle import AUTH_FAILURES, VERIFY_FAILURES, FailureThrottle
from keyplane.services.usage import NO_SCOPES, Tally
from keyplane.services.verify import NOT_FOUND, Verdict, Verifier, cache_key

GUESSES = frozenset({Code.MALFORMED, Code.NOT_FOUND})  # what a guesser gets; counted per address
_VALID = Code.VALID.value
THROTTLED = "too many failed attempts from this address; try again later"


def too_many_failures(retry_after: int, limit: int) -> RateLimited:
    return RateLimited(THROTTLED, retry_after=retry_after, limit=limit)


class VerifyRequest(NamedTuple):
    """What a verifier asks: may ``key`` make a request needing ``scopes``, from ``ip``?"""

    key: str  # the credential asked about ("<name>:" and "Bearer " already taken off)
    scopes: frozenset[str] = frozenset()
    ip: str | None = None  # the end user's address as given: refused unless IPv4 or IPv6
    tls: bool | None = None
    tenant_id: str | None = None  # the Location ID given beside the key


class Reuse(NamedTuple):
    """What a repeat of an answer must still do, and until when it may be given."""

    caller_key_id: str | None  # None: a proxy's question (no caller credential)
    key_id: str
    code: str  # the answer's code: what the key's use is counted as
    expires: float  # the earlier of both credentials' expiries, POSIX time (inf: none)
    caller_ip: Address | None
    subject: Address | None  # whose guesses VERIFY_FAILURES counts
    ip: Address | None  # the end user's address (where the key was used)
    scopes: frozenset[str]  # what a valid answer needed: counted per scope
    reason: str | None  # a refusal's reason, kept for the key's page
    generation: int  # the cache's generation before either credential was read
    depends: tuple[bytes, ...]  # the cache keys of both credentials (the key alone: a proxy)
    # where a repeat's valid uses are counted without the recorder's lock (usage.py's Tally),
    # once the answer is remembered: the caller's credential, and the key when it is valid
    caller_tally: Tally | None = None
    tally: Tally | None = None


class Answer(NamedTuple):
    verdict: Verdict
    reuse: Reuse | None = None  # set when this answer may be given again (``remember``)
    retry_after: int | None = None  # set when the failure throttle refuses the address

    @property
    def code(self) -> str:
        return self.verdict.decision.code.value

    @property
    def cacheable(self) -> bool:
        """May an SDK reuse this answer? Not when every use must be counted here."""
        snap = self.verdict.snapshot
        return self.verdict.valid and snap is not None and not snap.counted


class Remembered(NamedTuple):
    """An encoded answer (the adapter's bytes, and its status and headers if it has any) and
    what a repeat of it must do."""

    body: bytes
    reuse: Reuse
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()


class Peer:
    """Who calls, from where, in one HTTP request; and what was already verified and counted
    for it, so that finishing a request elsewhere (a thread, the route) counts nothing twice."""

    __slots__ = ("_caller", "_generation", "_key", "_verdict", "ip", "request_id", "tls",
                 "user_agent")

    def __init__(self, ip: Address | None, tls: bool, request_id: str | None = None,
                 user_agent: str | None = None) -> None:
        self.ip = ip
        self.tls = tls
        self.request_id = request_id
        self.user_agent = user_agent
        self._verdict: Verdict | None = None  # the caller's credential, verified and counted
        self._caller: Caller | KeyplaneError | None = None  # what became of it
        self._generation = 0
        self._key: tuple[VerifyRequest, Verdict] | None = None  # the key, verified, counted


def as_seen_by(caller: Caller, verdict: Verdict) -> Verdict:
    """A tenant's verifier cannot learn anything about other tenants' keys."""
    snap = verdict.snapshot
    if snap is not None and caller.tenant_id is not None and snap.tenant_id != caller.tenant_id:
        return Verdict(NOT_FOUND)
    return verdict


def at_location(verdict: Verdict, tenant_id: str | None) -> Verdict:
    """With a Location ID beside the key, a key of another tenant is unknown (and counted as a
    guess)."""
    snap = verdict.snapshot
    if tenant_id is not None and snap is not None and snap.tenant_id != tenant_id:
        return Verdict(NOT_FOUND)
    return verdict


def throttled(limit: int, wait: int) -> Verdict:
    """RATE_LIMITED for an address over the failure limit, whatever key it presents now."""
    return Verdict(Denied(Code.RATE_LIMITED, THROTTLED), None,
                   {"limit": limit, "remaining": 0, "reset_at": math.ceil(time.time()) + wait})


class VerifyService:
    def __init__(self, verifier: Verifier, throttle: FailureThrottle) -> None:
        self.verifier = verifier
        self.throttle = throttle

    def _throttled(self, wait: int) -> Answer:
        return Answer(throttled(self.throttle.limit, wait), None, wait)

    # -- 1. the caller ----------------------------------------------------------------------

    def authenticate_if_cached(self, credential: str | None, peer: Peer) -> Caller | None:
        """The caller, or the error refusing it, without I/O; ``None``: call ``authenticate``
        (from a thread)."""
        return self._authenticate(credential, peer, False)

    def authenticate(self, credential: str | None, peer: Peer) -> Caller:
        found = self._authenticate(credential, peer, True)
        assert found is not None
        return found

    def _authenticate(self, credential: str | None, peer: Peer, load: bool) -> Caller | None:
        done = peer._caller
        if done is not None:
            if isinstance(done, Caller):
                return done
            raise done
        throttle = self.throttle
        verdict = peer._verdict
        if verdict is None:
            wait = throttle.retry_after(AUTH_FAILURES, peer.ip)
            if wait is not None:
                raise too_many_failures(wait, throttle.limit)
            if not credential:
                raise AuthenticationError("a bearer credential is required",
                                          code="unauthenticated")
            verifier = self.verifier
            peer._generation = verifier.cache.generation  # before anything is read from it
            verdict = verifier.verify_cached(credential, ip=peer.ip, tls=peer.tls)
            if verdict is None:
                if not load:
                    return None
                verdict = verifier.verify(credential, ip=peer.ip, tls=peer.tls)
            peer._verdict = verdict
        try:
            if verdict.decision.code in GUESSES:
                if not load:
                    return None
                wait = throttle.failed(AUTH_FAILURES, peer.ip, request_id=peer.request_id)
                if wait is not None:
                    raise too_many_failures(wait, throttle.limit)
            found = caller_from(verdict, ip=peer.ip, request_id=peer.request_id,
                                user_agent=peer.user_agent)
        except KeyplaneError as exc:
            peer._caller = exc
            raise
        peer._caller = found
        return found

    # -- 2.-6. the answer -------------------------------------------------------------------

    def answer_if_cached(self, credential: str | None, peer: Peer,
                         request: VerifyRequest) -> Answer | None:
        """The answer, or the error refusing the call, without I/O; ``None``: call ``answer``
        (from a thread), which continues from where this stopped."""
        caller = self._authenticate(credential, peer, False)
        if caller is None:
            return None
        return self._answer(caller, credential, peer, request, False)

    def answer(self, credential: str | None, peer: Peer, request: VerifyRequest) -> Answer:
        caller = self.authenticate(credential, peer)
        found = self._answer(caller, credential, peer, request, True)
        assert found is not None
        return found

    def answer_proxy_if_cached(self, peer: Peer, request: VerifyRequest) -> Answer | None:
        """A trusted proxy's question (``/v1/forward-auth``): may its client, at ``peer.ip``
        and ``peer.tls``, use ``request.key`` for a request needing ``request.scopes``? The
        proxy was trusted by its address (the adapter's check): steps 3-7, as ``answer``.
        Without I/O; ``None``: call ``answer_proxy`` (from a thread)."""
        return self._answer(None, None, self._proxied(peer, request), request, False)

    def answer_proxy(self, peer: Peer, request: VerifyRequest) -> Answer:
        found = self._answer(None, None, self._proxied(peer, request), request, True)
        assert found is not None
        return found

    def _proxied(self, peer: Peer, request: VerifyRequest) -> Peer:
        if request.ip is not None or request.tls is not None:
            raise ValueError("a proxy's client is the peer: its address and TLS")
        if peer._key is None:  # nothing read yet: the generation before anything is
            peer._generation = self.verifier.cache.generation
        return peer

    def _answer(self, caller: Caller | None, credential: str | None, peer: Peer,
                request: VerifyRequest, load: bool) -> Answer | None:
        ip: Address | None
        tls: bool | None
        if caller is not None:
            caller.require("keys:verify")
            ip = None
            tls = request.tls
            if request.ip is not None:
                ip = parse_address(request.ip)
                if ip is None:
                    raise ValidationError("ip is not an IPv4 or IPv6 address", field="ip")
        else:  # a proxy's client: the peer itself
            ip, tls = peer.ip, peer.tls
        subject = ip if ip is not None else peer.ip
        throttle = self.throttle
        wait = throttle.retry_after(VERIFY_FAILURES, subject)
        if wait is not None:
            return self._throttled(wait)
        done = peer._key
        if done is not None and done[0] == request:
            verdict = done[1]
        else:
            verifier = self.verifier
            verdict_or_none = verifier.verify_cached(request.key, required=request.scopes,
                                                     ip=ip, tls=tls)
            if verdict_or_none is None:
                if not load:
                    return None
                verdict_or_none = verifier.verify(request.key, required=request.scopes,
                                                  ip=ip, tls=tls)
            if caller is not None:
                verdict_or_none = as_seen_by(caller, verdict_or_none)
            verdict = at_location(verdict_or_none, request.tenant_id)
            peer._key = (request, verdict)
        decision = verdict.decision
        if decision.code in GUESSES:
            if not load:
                return None
            wait = throttle.failed(VERIFY_FAILURES, subject, request_id=peer.request_id
                                   if caller is None else caller.request_id)
            if wait is not None:
                return self._throttled(wait)
            return Answer(verdict)
        # may the same request be answered again without these steps? Not when either
        # credential moves a counter (rate limit, usage quota), and never past an expiry
        snap = verdict.snapshot
        if snap is None or snap.counted:
            return Answer(verdict)
        expires_at = snap.expires_at
        caller_key_id: str | None = None
        caller_ip: Address | None = None
        depends: tuple[bytes, ...]
        if caller is None:
            depends = (cache_key(request.key),)
        else:
            seen = peer._verdict
            if seen is None or credential is None:
                return Answer(verdict)
            mine = seen.snapshot
            if mine is None or mine.counted:
                return Answer(verdict)
            if mine.expires_at is not None and (expires_at is None
                                                or mine.expires_at < expires_at):
                expires_at = mine.expires_at
            caller_key_id, caller_ip = mine.key_id, peer.ip
            depends = (cache_key(credential), cache_key(request.key))
        # an answer given after an expiry would be wrong before it (clocks can step back)
        if expires_at is not None and self.verifier.ctx.clock.now() >= expires_at:
            return Answer(verdict)
        valid = decision.valid
        scopes = request.scopes if valid else NO_SCOPES
        return Answer(verdict, Reuse(
            caller_key_id, snap.key_id, decision.code.value,
            math.inf if expires_at is None else expires_at.timestamp(), caller_ip, subject, ip,
            scopes, None if valid else decision.reason, peer._generation, depends,
            None if caller_key_id is None else Tally(caller_key_id, NO_SCOPES, caller_ip),
            Tally(snap.key_id, scopes, ip) if valid else None))

    # -- a key named in another request (POST /v1/events) -----------------------------------

    def identify(self, caller: Caller, raw: str) -> Verdict:
        """Whose key ``raw`` is and whether it is live, as ``caller`` may learn it: another
        tenant's key is unknown (step 5), and an unknown key is a guess, counted against the
        caller's address like a guess at /v1/verify (steps 3 and 6: over the limit, 429). May
        do I/O: call it from a thread."""
        subject = parse_address(caller.ip)
        throttle = self.throttle
        wait = throttle.retry_after(VERIFY_FAILURES, subject)
        if wait is not None:
            raise too_many_failures(wait, throttle.limit)
        verdict = as_seen_by(caller, self.verifier.identify(raw))
        if verdict.snapshot is None or verdict.decision.code in GUESSES:
            wait = throttle.failed(VERIFY_FAILURES, subject, request_id=caller.request_id)
            if wait is not None:
                raise too_many_failures(wait, throttle.limit)
        return verdict

    # -- the credential of an open stream (GET /v1/changes) ---------------------------------

    def still_allowed_if_cached(self, credential: str | None, peer: Peer) -> bool | None:
        """Whether the credential that opened a stream still authenticates (step 1, on a new
        ``Peer``: nothing of the opening request is taken for granted) and still holds
        ``keys:verify``; without I/O (``None``: call ``still_allowed`` from a thread)."""
        try:
            found = self._authenticate(credential, peer, False)
        except KeyplaneError:
            return False
        return None if found is None else found.holds("keys:verify")

    def still_allowed(self, credential: str | None, peer: Peer) -> bool:
        try:
            return self.authenticate(credential, peer).holds("keys:verify")
        except KeyplaneError:
            return False

    # -- 7. reuse ---------------------------------------------------------------------------

    def remember(self, request: bytes, body: bytes, answer: Answer, status: int = 200,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Keeps ``body`` (the encoded ``answer``, with its status and headers) for the request
        known by the digest ``request``, if the answer may be reused."""
        reuse = answer.reuse
        if reuse is not None:
            verifier = self.verifier
            cache = verifier.cache
            if cache.remember(cache.answers, request, Remembered(body, reuse, status, headers),
                              reuse.generation, reuse.depends):
                for tally in (reuse.caller_tally, reuse.tally):
                    if tally is not None:
                        verifier.usage.adopt(tally)

    def remembered(self, request: bytes) -> Remembered | None:
        """The answer kept for this request, if it may be given now; both uses are counted."""
        verifier = self.verifier
        if not verifier.cache_trusted():
            return None  # a database outage past its grace: fail closed
        cache = verifier.cache
        found: Remembered | None = cache.remembered(cache.answers, request)
        if found is None:
            return None
        reuse = found.reuse
        now = verifier.ctx.clock.timestamp()
        if now >= reuse.expires:
            return None
        throttle = self.throttle
        if throttle.retry_after(AUTH_FAILURES, reuse.caller_ip) is not None or \
                throttle.retry_after(VERIFY_FAILURES, reuse.subject) is not None:
            return None
        usage = verifier.usage
        if reuse.caller_key_id is not None:
            usage.count_repeat(reuse.caller_tally, reuse.caller_key_id, now, _VALID,
                               ip=reuse.caller_ip)
            verifier.cache_hits += 1
        usage.count_repeat(reuse.tally, reuse.key_id, now, reuse.code, reuse.scopes, reuse.ip,
                           reuse.reason)
        verifier.cache_hits += 1  # each credential answered from the cache
        return found
