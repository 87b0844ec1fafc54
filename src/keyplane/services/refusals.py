"""Refused management calls as ``authz_fail`` audit events, aggregated so that nobody can fill
the audit log by being refused.

A refusal (403, or 404 on an id the caller may not see) is counted in memory, with no database
write on the request: one group per (minute, caller's tenant, credential, route, status, code).
A background flusher writes each group once its minute is over, as one audit event with the
``count``; a graceful stop writes the open ones too. So each worker writes at most one row per
credential, route and status per minute, and at most ``MAX_GROUPS`` groups are held: past that,
a tenant's further refusals in that minute fold into one group per tenant and status
(``route: "*"``), and past twice that they are only counted in the log.

The event belongs to the *caller's* tenant (the operator's log holds every tenant's). A 404 does
not say whether the id exists in another tenant: the caller's tenant can read its own audit log,
so that distinction would be the very oracle the 404 avoids. The tenant whose id was probed is
not told either: it learned nothing and nothing of its changed; the operator sees both.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keyplane.core import ids
from keyplane.core.model import AuditEvent
from keyplane.core.rights import Caller
from keyplane.core.tokens import redact_secrets
from keyplane.services.context import Context

log = logging.getLogger("keyplane.audit")

ACTION = "authz_fail"
WINDOW = timedelta(minutes=1)
MAX_GROUPS = 10_000  # groups held in memory per worker between flushes
MAX_LISTED = 5  # distinct targets and addresses named in one event
MAX_TEXT = 80  # the audit table's target column

GroupKey = tuple[datetime, str | None, str, str, int, str]


@dataclass(slots=True)
class _Group:
    count: int
    first_at: datetime
    last_at: datetime
    request_id: str | None
    targets: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)


def _note(values: list[str], value: str | None) -> None:
    if value and len(values) < MAX_LISTED and value not in values:
        values.append(value)


def _clean(text: str) -> str:
    """Caller-controlled text fit for the audit log: no secret, bounded, printable."""
    text = redact_secrets(text)[:MAX_TEXT]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")[:MAX_TEXT]


class RefusalRecorder:
    def __init__(self, ctx: Context, interval: float = 5.0) -> None:
        self.ctx = ctx
        self.interval = interval
        self._groups: dict[GroupKey, _Group] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # refusals only logged: the groups were full

    def refused(self, caller: Caller, route: str, status: int, code: str,
                target: str | None = None) -> None:
        """Counts one refused call (cheap: a dict update under a lock)."""
        now = self.ctx.clock.now()
        window = now.replace(second=0, microsecond=0)
        key: GroupKey = (window, caller.tenant_id, caller.actor, _clean(route), status,
                         _clean(code))
        with self._lock:
            group = self._groups.get(key)
            if group is None and len(self._groups) >= MAX_GROUPS:
                key = (window, caller.tenant_id, "*", "*", status, "*")
                group = self._groups.get(key)
                if group is None and len(self._groups) >= 2 * MAX_GROUPS:
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 10_000 == 0:
                        log.warning("%d refused calls not audited: too many at once",
                                    self.dropped)
                    return
            if group is None:
                group = self._groups[key] = _Group(0, now, now, caller.request_id)
            group.count += 1
            group.last_at = now
            _note(group.targets, _clean(target) if target else None)
            _note(group.ips, caller.ip)

    def pending(self) -> int:
        with self._lock:
            return sum(g.count for g in self._groups.values())

    def flush(self, everything: bool = True) -> int:
        """Writes the groups whose minute is over (``everything``: all of them) as audit
        events, in one transaction; on failure keeps them for the next flush. Returns the
        number of events written."""
        with self._flush_lock:
            cutoff = self.ctx.clock.now() - WINDOW
            with self._lock:
                due = {k: g for k, g in self._groups.items() if everything or k[0] <= cutoff}
                for k in due:
                    del self._groups[k]
            if not due:
                return 0
            try:
                with self.ctx.uow() as uow:
                    # one tenant's chain head after another, in one order in every
                    # process: two flushes never wait on each other's heads (no deadlock)
                    for key, group in sorted(due.items(),
                                             key=lambda kv: (kv[0][1] or "", kv[0][0])):
                        uow.audit.add(self._event(key, group))
                    uow.commit()
            except Exception:
                log.exception("writing refused calls to the audit log failed; will retry")
                with self._lock:
                    for k, g in due.items():
                        mine = self._groups.get(k)
                        if mine is None:
                            self._groups[k] = g
                        else:
                            g.count += mine.count
                            g.last_at = mine.last_at
                            self._groups[k] = g
                return 0
            return len(due)

    @staticmethod
    def _event(key: GroupKey, group: _Group) -> AuditEvent:
        window, tenant_id, actor, route, status, code = key
        return AuditEvent(
            id=ids.new_id("evt"), at=group.first_at, tenant_id=tenant_id, actor=actor,
            action=ACTION, target=group.targets[0] if group.targets else route,
            outcome="refused", ip=group.ips[0] if group.ips else None,
            request_id=group.request_id,
            credential=actor if actor.startswith("key:") else None,
            details={"route": route, "status": status, "code": code, "count": group.count,
                     "first_at": group.first_at.isoformat(),
                     "last_at": group.last_at.isoformat(), "targets": group.targets,
                     "ips": group.ips, "window_start": window.isoformat(),
                     "window_seconds": int(WINDOW.total_seconds())},
        )

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="keyplane-refusals",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush(everything=False)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()  # a graceful stop writes the minute in progress too
