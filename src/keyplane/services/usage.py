"""Usage recording without a database write per request: ``last_used_at`` and request counts
per key, hour and outcome are batched in memory and flushed on a timer and at shutdown (a
graceful stop loses nothing). Flushes add to the stored counts, so several workers flushing
the same hour never overwrite each other.

A key's refused verifications are also remembered one by one, with their reason, so that its
owner can see why it was refused: bounded at every step (the newest ``DENIALS_KEPT`` per key in
memory and in storage, at most ``DENIAL_KEYS_HELD`` keys held between flushes; past that,
refusals are only counted)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from keyplane.core.errors import ValidationError
from keyplane.core.model import Denial
from keyplane.core.ports import ScopeCounts, ScopeUsageStore, UnitOfWork, UsageStore
from keyplane.core.rights import Caller
from keyplane.core.tokens import redact_secrets
from keyplane.services.context import Context
from keyplane.services.keys import KeyService

log = logging.getLogger("keyplane.usage")

# (uow, last_used by id, request counts by (id, outcome)): extra stores flushed in the same
# transaction, e.g. connected apps' last use and request counts
UsageSink = Callable[[UnitOfWork, dict[str, datetime], Counter[tuple[str, str]]], None]

Address = IPv4Address | IPv6Address

# (addresses each key was used from since the last flush, request counts by (id, outcome)),
# after the counts are written: what is learnt from uses, e.g. a key used from a new network
# (services/signals.py); a watcher opens its own transaction when it has something to write
UsageWatcher = Callable[[dict[str, dict[Address, datetime]], Counter[tuple[str, str]]], None]
MAX_ADDRESS_KEYS = 50_000  # keys whose addresses are kept between flushes (bounded memory)
MAX_ADDRESSES_PER_KEY = 32

HOUR = timedelta(hours=1)
HOUR_SECONDS = 3600.0  # uses are counted per UTC hour, by POSIX time
MAX_SCOPE_ENTRIES = 100_000  # (key, scope, day) counts held between flushes: bounded
NO_SCOPES: frozenset[str] = frozenset()
Counts = Counter[tuple[str, datetime, str]]  # (key id, start of the hour, outcome) -> requests


DENIALS_KEPT = 20  # a key's newest refusals kept, in memory and in storage
DENIAL_KEYS_HELD = 10_000  # keys whose refusals are held in memory between flushes
MAX_REASON = 200


class Tally:
    """The uses of one remembered VALID verdict (a key, the scopes it needed, an address),
    counted without the recorder's lock: the verifier's repeat of a question is a few hundred
    nanoseconds, and a locked dict update would be most of them.

    A use at the POSIX time ``at`` is counted here only if ``since <= at < until`` (the
    recorder's current hour while it holds the tally; empty when it does not):

        next(tally.uses); tally.last = at

    ``uses`` is an ``itertools.count``: one C call, atomic under the GIL, so no use is lost
    between threads. The recorder takes the count at every fold (each flush, each new hour) into
    the same counts :meth:`UsageRecorder.record` keeps. Outside the window the caller records
    the use the ordinary way and calls :meth:`UsageRecorder.adopt`. A tally without uses since
    the last fold is closed (its window emptied), and let go one fold later, so that a use that
    saw the window open just before is still taken: verdicts come and go with every change, and
    the recorder holds only the tallies in use."""

    __slots__ = ("_read", "ip", "key_id", "last", "scopes", "since", "until", "uses")

    def __init__(self, key_id: str, scopes: frozenset[str], ip: Address | None) -> None:
        self.key_id = key_id
        self.scopes = scopes
        self.ip = ip
        self.last = 0.0  # POSIX time of the latest use
        self.since = self.until = 0.0  # empty: not held by the recorder
        self.uses = itertools.count()
        self._read = 0

    def take(self) -> int:
        """The uses since the last take (reading the counter advances it once)."""
        read = next(self.uses)
        uses = read - self._read
        self._read = read + 1
        return uses


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


class UsageRecorder:
    def __init__(self, ctx: Context, interval: float = 5.0,
                 store: UsageStore | None = None,
                 scope_store: ScopeUsageStore | None = None, *,
                 sinks: Sequence[UsageSink] = (),
                 watchers: Sequence[UsageWatcher] = ()) -> None:
        """``sinks``: other credentials' uses (e.g. connections'), written in each flush;
        ``watchers``: run in the flush's transaction (e.g. the key signals)."""
        self.ctx = ctx
        self.interval = interval
        self.store = store
        self.scope_store = scope_store
        self._scopes: ScopeCounts = {}
        self._needed: dict[tuple[str, frozenset[str]], int] = {}  # this hour, by scope set
        self.scopes_dropped = 0  # uses not counted per scope because the buffer was full
        self._last_used: dict[str, float] = {}  # key id -> POSIX time of its last valid use
        self._addresses: dict[str, dict[Address, datetime]] = {}  # key id -> address -> first use
        self._last_ip: dict[str, Address] = {}  # key id -> the address of its last use
        self._counts: Counts = Counter()  # earlier hours
        # the hour being counted, by (key id, outcome): no datetime is hashed per request
        self._current: dict[tuple[str, str], int] = {}
        self.hour = self.hour_end = 0.0  # the hour being counted, in POSIX seconds
        self._tallies: set[Tally] = set()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sinks: tuple[UsageSink, ...] = tuple(sinks)
        self.watchers: tuple[UsageWatcher, ...] = tuple(watchers)
        self._denials: dict[str, deque[Denial]] = {}
        self.denials_dropped = 0  # refusals only counted: too many keys refused at once

    def record(self, key_id: str, at: float, outcome: str, count: int = 1,
               scopes: frozenset[str] = NO_SCOPES, ip: Address | None = None,
               reason: str | None = None) -> None:
        """Counts ``count`` verifications at the POSIX time ``at`` (``ctx.clock.timestamp()``:
        the hot path builds no datetime). ``scopes``: what a valid use needed (per-scope
        usage, for the hygiene report's "broader than used"), counted by the set and spread per
        scope and day when folded. ``ip`` (an address object), when known, is where the key
        was used: a few distinct addresses per key are kept from valid uses until the next
        flush; a refusal's ``reason`` (never for VALID) is remembered with its address for the
        key's page."""
        # the lock keeps flush consistent (taken by hand: ``with`` costs twice as much)
        lock = self._lock
        lock.acquire()
        try:
            if not self.hour <= at < self.hour_end:
                self._fold()
                self.hour = at - at % HOUR_SECONDS
                self.hour_end = self.hour + HOUR_SECONDS
                for tally in self._tallies:
                    if tally.until:
                        tally.since, tally.until = self.hour, self.hour_end
            self._count(key_id, at, outcome, count, scopes, ip)
            if reason is not None:
                self._remember_denial(key_id, Denial(utc(at), outcome, reason,
                                                     None if ip is None else str(ip)))
        finally:
            lock.release()

    def count_repeat(self, tally: Tally | None, key_id: str, at: float, outcome: str,
                     scopes: frozenset[str] = NO_SCOPES, ip: Address | None = None,
                     reason: str | None = None) -> None:
        """One use of a remembered answer: on its ``tally`` (one C call) while this recorder
        holds the tally's hour, else recorded as :meth:`record` does and the tally adopted."""
        if tally is not None and tally.since <= at < tally.until:
            next(tally.uses)
            tally.last = at
            return
        self.record(key_id, at, outcome, 1, scopes, ip, reason)
        if tally is not None:
            self.adopt(tally)

    def adopt(self, tally: Tally) -> None:
        """Counts ``tally``'s uses in the current hour (again, if it was closed; call it after
        :meth:`record`, which starts the hour)."""
        with self._lock:
            tally.since, tally.until = self.hour, self.hour_end
            self._tallies.add(tally)

    def _count(self, key_id: str, at: float, outcome: str, count: int,
               scopes: frozenset[str], ip: Address | None) -> None:
        """Two dict updates (three with scopes or an address); the caller holds the lock."""
        if outcome == "VALID":
            if self._last_used.get(key_id, 0.0) < at:
                self._last_used[key_id] = at
            # an address object hashes slowly (in Python): a repeat of the key's last
            # address (the same memoised object) costs one lookup
            if ip is not None and self._last_ip.get(key_id) is not ip:
                self._last_ip[key_id] = ip
                seen = self._addresses.get(key_id)
                if seen is None and len(self._addresses) < MAX_ADDRESS_KEYS:
                    seen = self._addresses[key_id] = {}
                if seen is not None and ip not in seen and (
                        len(seen) < MAX_ADDRESSES_PER_KEY):
                    seen[ip] = utc(at)
        current, k = self._current, (key_id, outcome)
        current[k] = current.get(k, 0) + count
        if scopes:
            needed, sk = self._needed, (key_id, scopes)
            n = needed.get(sk)
            if n is not None:
                needed[sk] = n + count
            elif len(needed) < MAX_SCOPE_ENTRIES:
                needed[sk] = count
            else:
                self.scopes_dropped += count

    def _remember_denial(self, key_id: str, denial: Denial) -> None:
        """The caller holds the lock."""
        held = self._denials.get(key_id)
        if held is None:
            if len(self._denials) >= DENIAL_KEYS_HELD:
                self.denials_dropped += 1
                return
            held = self._denials[key_id] = deque(maxlen=DENIALS_KEPT)
        held.append(denial)

    def _take_tallies(self, close: bool = True) -> None:
        """Counts the tallies' uses into the current hour; closes those without any since the
        last take and lets go of those closed a take ago. The caller holds the lock."""
        done = []
        for tally in self._tallies:
            uses = tally.take()
            if uses:
                self._count(tally.key_id, tally.last, "VALID", uses, tally.scopes, tally.ip)
            elif not close:
                continue
            elif tally.until:
                tally.since = tally.until = 0.0  # idle: a use is recorded and re-adopts it
            else:
                done.append(tally)
        self._tallies.difference_update(done)

    def _fold(self) -> None:
        """Moves the current hour's counts into ``_counts`` (and its per-scope counts into
        ``_scopes``, by day); the caller holds the lock."""
        if self._tallies:
            self._take_tallies()
        hour, counts = utc(self.hour), self._counts
        for (key_id, outcome), n in self._current.items():
            counts[(key_id, hour, outcome)] += n
        self._current = {}
        if self._needed:
            needed, self._needed = self._needed, {}
            if self.scope_store is None:
                return
            day, by_day = hour.replace(hour=0), self._scopes
            for (key_id, scopes), n in needed.items():
                for scope in scopes:
                    k = (key_id, scope, day)
                    if k in by_day or len(by_day) < MAX_SCOPE_ENTRIES:
                        by_day[k] = by_day.get(k, 0) + n
                    else:
                        self.scopes_dropped += n

    def pending(self) -> int:
        """Requests counted in memory and not yet flushed."""
        with self._lock:
            self._take_tallies(close=False)
            return (sum(self._counts.values()) + sum(self._current.values())
                    + len(self._scopes) + len(self._needed))

    def flush(self) -> int:
        """Writes what was recorded since the last flush in one transaction; on failure puts
        it back to be written by the next flush. Returns the number of requests written.
        Watchers then run in a transaction of their own: what they learn (new addresses,
        refusal bursts) never holds up the counts, and a watcher's failure is logged and
        loses only its own view of this batch."""
        with self._flush_lock:
            with self._lock:
                self._fold()
                used, self._last_used = self._last_used, {}
                counts, self._counts = self._counts, Counter()
                addresses, self._addresses = self._addresses, {}
                self._last_ip = {}
                scopes, self._scopes = self._scopes, {}
                denials, self._denials = self._denials, {}
            if not used and not counts and not scopes:
                return 0
            last_used = {key_id: utc(at) for key_id, at in used.items()}
            by_outcome: Counter[tuple[str, str]] = Counter()
            for (key_id, _hour, outcome), n in counts.items():
                by_outcome[(key_id, outcome)] += n
            try:
                uow: UnitOfWork
                with self.ctx.uow() as uow:
                    uow.keys.touch(last_used)
                    if self.store is not None:
                        self.store.add(uow, counts)
                        if denials:
                            self.store.add_denials(
                                uow, {k: [_clean(d) for d in held]
                                      for k, held in denials.items()}, DENIALS_KEPT)
                    if self.scope_store is not None and scopes:
                        self.scope_store.add_scopes(uow, scopes)
                    for sink in self.sinks:
                        sink(uow, last_used, by_outcome)
                    uow.commit()
            except Exception:
                log.exception("usage flush failed; will retry")
                with self._lock:
                    for k, when in used.items():
                        if k not in self._last_used or self._last_used[k] < when:
                            self._last_used[k] = when
                    self._counts.update(counts)
                    for k, seen in addresses.items():
                        mine = self._addresses.setdefault(k, {})
                        for address, at in seen.items():
                            mine.setdefault(address, at)
                    for sk, n in scopes.items():
                        self._scopes[sk] = self._scopes.get(sk, 0) + n
                    for k, held in denials.items():
                        for denial in held:  # older ones first: newer ones stay newest
                            self._remember_denial(k, denial)
                return 0
            for watcher in self.watchers:
                try:
                    watcher(addresses, by_outcome)
                except Exception:
                    log.exception("usage watcher failed; this batch's signals are skipped")
            return sum(counts.values())

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="keyplane-usage", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for attempt in range(3):  # the last chance to write what this process counted
            self.flush()
            left = self.pending()
            if not left:
                return
            time.sleep(0.2 * (attempt + 1))
        log.error("usage flush failed at shutdown; %d counted requests were not written", left)


MAX_RANGE = timedelta(days=93)


# Whose is this id? ``(tenant_id,)`` (None for the operator's own keys) for a live key or
# connection, None for an unknown or revoked one. One per id prefix (``key_``, ``con_``).
OwnerLookup = Callable[[UnitOfWork, str], tuple[str | None] | None]
MAX_REPORTED = 1000  # ids per report
MAX_REPORTED_COUNT = 1_000_000_000  # uses per id per report


class UsageService:
    """Reading a key's usage series (``GET /v1/keys/{id}/usage``), and the uses verifiers
    answered from their own caches (``POST /v1/usage``)."""

    def __init__(self, ctx: Context, keys: KeyService, store: UsageStore,
                 recorder: UsageRecorder, *,
                 owners: Mapping[str, OwnerLookup] | None = None) -> None:
        """``owners``: the tenant of another kind of credential's id, by its id prefix
        (e.g. connections'); keys are built in."""
        self.ctx = ctx
        self.keys = keys  # it decides who may see the key
        self.store = store
        self.recorder = recorder
        self.owners: dict[str, OwnerLookup] = {"key_": _key_owner, **(owners or {})}

    def report(self, caller: Caller, uses: Mapping[str, int]) -> dict[str, int]:
        """Counts uses of keys (and connections) that a verifier such as the SDK middleware
        answered from its own cache, as ``VALID`` verifications now. Ids the caller may not
        verify (another tenant's, unknown, revoked) are ignored alike: no oracle."""
        caller.require("keys:verify")
        if len(uses) > MAX_REPORTED:
            raise ValidationError(f"uses: at most {MAX_REPORTED} ids per report", field="uses")
        for key_id, count in uses.items():
            if not isinstance(count, int) or not 1 <= count <= MAX_REPORTED_COUNT:
                raise ValidationError(f"uses: the count of {key_id[:40]!r} must be 1 to "
                                      f"{MAX_REPORTED_COUNT}", field="uses")
        accepted: dict[str, int] = {}
        with self.ctx.uow(readonly=True) as uow:
            for key_id, count in uses.items():
                lookup = self.owners.get(key_id[:4])
                owner = lookup(uow, key_id) if lookup is not None else None
                if owner is None or (caller.tenant_id is not None
                                     and owner[0] != caller.tenant_id):
                    continue
                accepted[key_id] = count
        now = self.ctx.clock.timestamp()
        for key_id, count in accepted.items():
            self.recorder.record(key_id, now, "VALID", count)
        return {"accepted": len(accepted), "ignored": len(uses) - len(accepted)}

    def series(self, caller: Caller, tenant_id: str | None, key_id: str, *,
               start: datetime | None, end: datetime | None,
               operator: bool = False) -> dict[str, Any]:
        key = self.keys.get(caller, tenant_id, key_id, operator=operator)
        now = self.ctx.clock.now()
        end = _aware(end) if end is not None else hour_of(now) + HOUR
        start = _aware(start) if start is not None else end - timedelta(days=7)
        if start >= end:
            raise ValidationError("from must be before to", field="from")
        if end - start > MAX_RANGE:
            raise ValidationError(f"from and to may be at most {MAX_RANGE.days} days apart",
                                  field="from")
        with self.ctx.uow(readonly=True) as uow:
            rows = self.store.series(uow, key.id, hour_of(start), end)
        return {"key_id": key.id, "from": hour_of(start), "to": end,
                "items": [{"hour": h, "outcome": o, "count": n} for h, o, n in rows],
                "last_used_at": key.last_used_at}

    def daily(self, caller: Caller, tenant_id: str | None, key_id: str, *,
              days: int = 30) -> list[tuple[date, dict[str, int]]]:
        """Requests per UTC day and outcome over the last ``days`` days (today included),
        oldest first; a day without requests has an empty mapping."""
        key = self.keys.get(caller, tenant_id, key_id)
        today = self.ctx.clock.now().astimezone(UTC).date()
        first = today - timedelta(days=days - 1)
        start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
        with self.ctx.uow(readonly=True) as uow:
            rows = self.store.series(uow, key.id, start, start + timedelta(days=days))
        by_day: dict[date, dict[str, int]] = {first + timedelta(days=i): {}
                                              for i in range(days)}
        for hour, outcome, count in rows:
            day = by_day.get(hour.astimezone(UTC).date())
            if day is not None:
                day[outcome] = day.get(outcome, 0) + count
        return list(by_day.items())

    def last_denials(self, caller: Caller, tenant_id: str | None, key_id: str, *,
                     limit: int = DENIALS_KEPT) -> list[Denial]:
        """The key's newest refused verifications, newest first (those still in memory are
        written by the next flush, within seconds)."""
        key = self.keys.get(caller, tenant_id, key_id)
        with self.ctx.uow(readonly=True) as uow:
            return self.store.denials(uow, key.id, min(limit, DENIALS_KEPT))


def _clean(denial: Denial) -> Denial:
    """A reason fit for storage: bounded, printable, never a secret."""
    reason = redact_secrets(denial.reason)[:MAX_REASON]
    if not reason.isprintable():
        reason = reason.encode("unicode_escape").decode("ascii")[:MAX_REASON]
    return denial._replace(reason=reason, ip=denial.ip[:45] if denial.ip else None)


def _key_owner(uow: UnitOfWork, key_id: str) -> tuple[str | None] | None:
    key = uow.keys.get_any(key_id)
    if key is None or key.revoked_at is not None:
        return None
    return (key.tenant_id,)


def _aware(value: datetime) -> datetime:
    """Query times without an offset are UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
