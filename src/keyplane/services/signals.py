"""What Keyplane learns from the uses it counts, raised as events at each usage flush (never
on the verify path, which only adds to in-memory counts):

- ``key.used_from_new_ip``: a valid use of a key from a network (IPv4 /24, IPv6 /64) it was
  not seen from among its last :data:`~keyplane.core.events.KNOWN_NETWORKS`. The first
  network a key is ever used from is learnt silently (it is where the integration runs). The
  address is the one Keyplane saw: the caller's for management calls, and for ``POST
  /v1/verify`` the end user's ``ip`` when the verifier names it (without it, the use is not
  attributed to an address).
- ``key.denied_burst``: more than ``limit`` refusals of one key (expired, revoked, disabled,
  wrong address, scope, TLS, rate limit …) within a fixed window, counted across every worker;
  sent once per key and window.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from keyplane.core.events import KNOWN_NETWORKS, network_of
from keyplane.core.model import ApiKey
from keyplane.core.ports import UnitOfWork
from keyplane.core.rights import SYSTEM
from keyplane.core.views import key_view, ts
from keyplane.services.context import Context
from keyplane.services.usage import Address

log = logging.getLogger("keyplane.events")

ACTOR = replace(SYSTEM, name="system:usage")
REFRESH = timedelta(hours=1)  # how often a known network's last use is written again
MAX_REMEMBERED = 100_000  # (key, network) pairs this process knows are stored
PRUNE_EVERY_SECONDS = 3600.0


class SignalsRepo(Protocol):
    def keys_by_id(self, key_ids: list[str]) -> dict[str, ApiKey]: ...
    def known_networks(self, key_ids: list[str]) -> dict[str, set[str]]: ...
    def seen(self, key_id: str, network: str, address: str, at: datetime) -> bool: ...
    def forget_networks(self, key_id: str, keep: int) -> list[str]: ...
    def add_denials(self, counts: dict[str, int], window_start: datetime) -> dict[str, int]: ...
    def alert_denials(self, key_id: str, window_start: datetime, now: datetime) -> bool: ...
    def prune_denials(self, before: datetime) -> None: ...


def window_start(at: datetime, window: timedelta) -> datetime:
    seconds = int(window.total_seconds())
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


class KeySignals:
    """A usage watcher (``UsageRecorder.watchers``): runs in the flush's transaction."""

    def __init__(self, ctx: Context, repos: Callable[[UnitOfWork], SignalsRepo], *,
                 known_networks: int = KNOWN_NETWORKS, burst_limit: int = 50,
                 burst_window: timedelta = timedelta(minutes=5)) -> None:
        self.ctx = ctx
        self.repos = repos
        self.known_networks = known_networks
        self.burst_limit = burst_limit
        self.burst_window = burst_window
        self._stored: dict[tuple[str, str], datetime] = {}  # written by us, and when
        self._next_prune = 0.0

    def __call__(self, addresses: dict[str, dict[Address, datetime]],
                 by_outcome: Counter[tuple[str, str]]) -> None:
        """Runs after a usage flush; opens a transaction only when there is news to check."""
        if addresses:
            self._addresses(addresses)
        if self.burst_limit > 0:
            denials: Counter[str] = Counter()
            codes: dict[str, Counter[str]] = {}
            for (key_id, outcome), n in by_outcome.items():
                if outcome != "VALID" and n > 0:
                    denials[key_id] += n
                    codes.setdefault(key_id, Counter())[outcome] += n
            if denials:
                with self.ctx.uow() as uow:
                    self._denials(uow, self.repos(uow), dict(denials), codes)
                    uow.commit()

    # -- new networks ----------------------------------------------------------------------------

    def _addresses(self, addresses: dict[str, dict[Address, datetime]]) -> None:
        # what this process wrote within the hour needs no write: most flushes write nothing
        pending: dict[str, dict[str, tuple[str, datetime]]] = {}
        for key_id, seen in addresses.items():
            for address, at in seen.items():
                network = network_of(address)
                stored_at = self._stored.get((key_id, network))
                if stored_at is not None and at - stored_at < REFRESH:
                    continue
                mine = pending.setdefault(key_id, {})
                if network not in mine or at < mine[network][1]:  # the first use reported
                    mine[network] = (str(address), at)
        if not pending:
            return
        with self.ctx.uow() as uow:
            self._networks(uow, self.repos(uow), pending)
            uow.commit()

    def _networks(self, uow: UnitOfWork, repo: SignalsRepo,
                  pending: dict[str, dict[str, tuple[str, datetime]]]) -> None:
        keys = {k: key for k, key in repo.keys_by_id(sorted(pending)).items()
                if key.tenant_id is not None}  # OAuth tokens and operator keys: not here
        # ids that are not tenant keys are not looked up again for an hour either
        written: list[tuple[tuple[str, str], datetime]] = [
            ((key_id, network), at) for key_id, nets in pending.items() if key_id not in keys
            for network, (_address, at) in nets.items()]
        dropped: list[tuple[str, str]] = []
        known = repo.known_networks(sorted(keys)) if keys else {}
        for key_id, key in keys.items():
            had = known.get(key_id, set())
            learnt = False
            for network, (address, at) in sorted(pending[key_id].items()):
                new = repo.seen(key_id, network, address, at)
                written.append(((key_id, network), at))
                if not new:
                    continue
                learnt = True
                if had:  # the first network a key is used from is where it belongs
                    self._emit(uow, "key.used_from_new_ip", key, {
                        "address": address, "network": network, "seen_at": ts(at),
                        "known_networks": sorted(had)})
            if learnt:
                dropped += [(key_id, n) for n in repo.forget_networks(key_id,
                                                                      self.known_networks)]
        uow.after_commit(lambda: self._remember(written, dropped))

    def _remember(self, written: list[tuple[tuple[str, str], datetime]],
                  dropped: list[tuple[str, str]]) -> None:
        """What this process need not write again within the hour. (Another process that
        pushed a network out of a key's set is heard of here within that hour at most.)"""
        if len(self._stored) > MAX_REMEMBERED:
            self._stored.clear()
        self._stored.update(written)
        for pair in dropped:
            self._stored.pop(pair, None)

    # -- refusal bursts --------------------------------------------------------------------------

    def _denials(self, uow: UnitOfWork, repo: SignalsRepo, denials: dict[str, int],
                 codes: dict[str, Counter[str]]) -> None:
        now = self.ctx.clock.now()
        start = window_start(now, self.burst_window)
        totals = repo.add_denials(denials, start)
        over = sorted(k for k, total in totals.items() if total > self.burst_limit)
        if over:
            keys = repo.keys_by_id(over)
            for key_id in over:
                key = keys.get(key_id)
                if key is None or key.tenant_id is None:
                    continue
                if repo.alert_denials(key_id, start, now):
                    self._emit(uow, "key.denied_burst", key, {
                        "denied": totals[key_id], "threshold": self.burst_limit,
                        "window_start": ts(start),
                        "window_seconds": int(self.burst_window.total_seconds()),
                        "codes": dict(sorted(codes.get(key_id, Counter()).items()))})
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            repo.prune_denials(now - max(timedelta(days=1), 2 * self.burst_window))

    def _emit(self, uow: UnitOfWork, event_type: str, key: ApiKey,
              extra: dict[str, Any]) -> None:
        assert key.tenant_id is not None
        if self.ctx.events is not None:
            self.ctx.events.emit(uow, event_type, key.tenant_id, {**key_view(key), **extra},
                                 ACTOR.actor)
        log.info("%s key=%s", event_type, key.id)
