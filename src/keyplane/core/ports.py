"""What the services need from the outside world, as Protocols. Adapters implement them."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar

from keyplane.core.audit_chain import ChainHead
from keyplane.core.changes import Change, ChangeKind
from keyplane.core.model import (
    ApiKey,
    AuditEvent,
    Denial,
    Group,
    KeySecret,
    Page,
    Principal,
    Share,
    Tenant,
)
from keyplane.core.policy import Snapshot
from keyplane.core.webhooks import Claimed, Delivery, DeliveryStatus, Outcome, Webhook


class Clock(Protocol):
    """Wall-clock time in UTC. ``timestamp()`` is the same instant as POSIX seconds: what the
    verification hot path compares and counts by (building a datetime costs more than the rest
    of a cached verification)."""

    def now(self) -> datetime: ...
    def timestamp(self) -> float: ...


class Mailer(Protocol):
    """Sends one plain-text email. ``enabled`` is False when no mail server is configured:
    callers then show what they would have sent (an invitation link) instead."""

    enabled: bool

    def send(self, to: Sequence[str], subject: str, text: str) -> None: ...


class NoMailer:
    """No mail server configured: nothing is sent."""

    enabled = False

    def send(self, to: Sequence[str], subject: str, text: str) -> None:
        return None


class SystemClock:
    """UTC wall-clock time: the one time source for expiry, grace and audit timestamps."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    timestamp = staticmethod(time.time)  # a C function: no Python frame per call


class TenantRepo(Protocol):
    def add(self, tenant: Tenant) -> None: ...
    def get(self, tenant_id: str, *, for_update: bool = False) -> Tenant | None: ...
    def update(self, tenant: Tenant) -> None: ...
    def page(self, *, limit: int, cursor: str | None) -> Page[Tenant]: ...


class PrincipalRepo(Protocol):
    def add(self, principal: Principal) -> None: ...
    def get(self, tenant_id: str, principal_id: str) -> Principal | None: ...
    def get_by_email(self, tenant_id: str, email: str) -> Principal | None: ...
    def many(self, tenant_id: str, principal_ids: Iterable[str]) -> dict[str, Principal]:
        """The tenant's principals among ``principal_ids``, by id (others are left out)."""
        ...
    def members_with_email(self, email: str) -> list[Principal]:
        """Every member (any tenant) signing in with this email: a person may belong to several."""
        ...
    def count_admins(self, tenant_id: str) -> int:
        """Enabled members with the admin role."""
        ...
    def update(self, principal: Principal) -> None: ...
    def delete(self, tenant_id: str, principal_id: str) -> None: ...
    def page(
        self, tenant_id: str, *, kind: str | None, limit: int, cursor: str | None
    ) -> Page[Principal]: ...


class GroupRepo(Protocol):
    def add(self, group: Group) -> None: ...
    def get(self, tenant_id: str, group_id: str) -> Group | None: ...
    def get_many(self, group_ids: Iterable[str]) -> list[Group]: ...
    def update(self, group: Group) -> None: ...
    def delete(self, tenant_id: str, group_id: str) -> None: ...
    def for_tenant(self, tenant_id: str) -> list[Group]: ...
    def member_ids(self, group_id: str) -> list[str]: ...


class KeyRepo(Protocol):
    def add(self, key: ApiKey) -> None: ...
    def get(self, tenant_id: str | None, key_id: str, *, for_update: bool = False) -> (
        ApiKey | None
    ): ...
    def get_any(self, key_id: str) -> ApiKey | None: ...
    def update(self, key: ApiKey) -> None: ...
    def page(
        self,
        tenant_id: str | None,
        *,
        owner_id: str | None,
        enabled: bool | None,
        q: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[ApiKey]: ...
    def ids_for_owner(self, owner_id: str) -> list[str]: ...
    def add_secret(self, secret: KeySecret) -> None: ...
    def secrets(self, key_id: str) -> list[KeySecret]: ...
    def update_secret(self, secret: KeySecret) -> None: ...
    def delete_secret(self, secret_id: str) -> None: ...
    def find_secret(self, digest: str) -> KeySecret | None: ...
    def touch(self, last_used: dict[str, datetime]) -> None: ...
    def set_remaining(self, key_id: str, remaining: int | None) -> None: ...


class ScopeRepo(Protocol):
    def all(self) -> dict[str, str]: ...
    def put(self, name: str, description: str) -> None: ...
    def delete(self, name: str) -> None: ...


class AuditRepo(Protocol):
    """The hash-chained audit log (core/audit_chain.py): ``add`` queues an entry in the
    caller's transaction; ``flush`` (the unit of work's commit) numbers and seals the queued
    entries under their chain heads' locks."""

    def add(self, event: AuditEvent) -> None: ...
    def flush(self) -> None: ...
    def page(
        self, tenant_id: str | None, *, action: str | None, limit: int, cursor: str | None,
        actor: str | None = None, target: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> Page[AuditEvent]: ...
    def heads(self, tenant_id: str | None = None, *, every: bool = False) -> list[ChainHead]: ...
    def chain(self, head: ChainHead, *, after: int, limit: int) -> list[AuditEvent]: ...
    def retention(self) -> list[tuple[str, int]]: ...
    def prune(self, tenant_id: str, before: datetime, now: datetime) -> int: ...


class ChangeRepo(Protocol):
    """The durable, ordered log of what changed, written in the use case's transaction
    (``Context.changed``); other processes read it through a :class:`ChangeSource`."""

    def append(self, kind: ChangeKind, ref: str) -> None: ...
    def head(self) -> int: ...


class ShareRepo(Protocol):
    def add(self, share: Share) -> None: ...
    def get(self, share_id: str, *, for_update: bool = False) -> Share | None: ...
    def update(self, share: Share) -> None: ...
    def forget_expired(self, now: datetime) -> int: ...


class ReportRepo(Protocol):
    """Digests of accepted secret-scanning reports, to refuse a replayed body."""

    def remember(self, digest: str, at: datetime) -> bool: ...
    def forget_before(self, at: datetime) -> int: ...


class SafetyRepos(Protocol):
    """Share links and leak-report replay digests, bound to one unit of work's transaction."""

    shares: ShareRepo
    reports: ReportRepo


class UnitOfWork(Protocol):
    tenants: TenantRepo
    principals: PrincipalRepo
    groups: GroupRepo
    keys: KeyRepo
    scopes: ScopeRepo
    audit: AuditRepo
    changes: ChangeRepo

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def commit(self) -> None: ...
    def after_commit(self, callback: Callable[[], None]) -> None: ...


# -- change propagation (core/changes.py) -------------------------------------------------------

Listener = Callable[[ChangeKind, str], None]


class ChangeBus(Protocol):
    """Announces committed changes in this process (``services/context.py`` ``LocalBus``):
    caches subscribe to drop what changed; cross-process fan-out (Redis, the change-log poller)
    subscribes to send this process's changes out, and publishes other processes' changes
    inside :func:`keyplane.core.changes.remote_delivery`."""

    def subscribe(self, listener: Listener) -> None: ...
    def publish(self, kind: ChangeKind, ref: str) -> None: ...


class ChangeSource(Protocol):
    """Reads the durable change log (``storage/sql/changefeed.py``)."""

    def head(self) -> int: ...
    def read(self, after: int, limit: int) -> list[Change]: ...


class ChangePoller(Protocol):
    """Keeps this process's caches in step by reading the change log every ``period`` seconds
    (``services/changes.py`` ``ChangeFeed``), as cross-process propagation drives it."""

    period: float

    @property
    def started(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def refresh(self) -> int:
        """Reads the log now; returns how many changes were new."""
        ...
    def wake(self) -> None:
        """Read the log soon (a change was announced)."""
        ...
    @property
    def stable_head(self) -> int:
        """The position up to which every change has been read."""
        ...


# -- verification (services/verify.py) --------------------------------------------------------

T = TypeVar("T")


class MISSING:
    """A cached 'no such key' (the digest is unknown)."""


class Memo(Protocol[T]):
    """A bounded map with a deadline per entry (``cache/local.py`` ``LRU``); ``size`` 0 keeps
    nothing."""

    @property
    def size(self) -> int: ...
    @property
    def table(self) -> Mapping[Hashable, tuple[float, T]]: ...  # key -> (deadline, value)
    def get(self, key: Hashable, now: float) -> T | None: ...
    def put(self, key: Hashable, value: T, deadline: float) -> None: ...


class VerificationCache(Protocol):
    """Snapshots by credential hash, unknown credentials, and answers remembered for exact
    repeats of a question (``cache/local.py``). ``generation`` moves on every invalidation:
    read it before reading storage, and nothing read since an invalidation is kept."""

    @property
    def generation(self) -> int: ...
    @property
    def verdicts(self) -> Memo[Any]: ...
    @property
    def answers(self) -> Memo[Any]: ...
    @property
    def entries(self) -> int: ...  # credentials held (for /metrics)
    @property
    def timer(self) -> Callable[[], float]: ...  # the clock of its deadlines (monotonic)
    def get(self, digest: Hashable) -> Snapshot | type[MISSING] | None: ...
    def put(self, digest: Hashable, snapshot: Snapshot, generation: int,
            seconds_left: float | None) -> None: ...
    def put_missing(self, digest: Hashable, generation: int) -> None: ...
    def seconds_left(self, digest: Hashable) -> float | None: ...  # of a cached snapshot
    def remembered(self, store: Memo[T], question: Hashable) -> T | None: ...
    def remember(self, store: Memo[T], question: Hashable, answer: T, generation: int,
                 depends_on: Iterable[Hashable]) -> bool: ...
    def invalidate(self, kind: str, ref: str) -> None: ...


class QuotaStore(Protocol):
    """Usage quotas (``storage/sql/usage.py``): takes one use of a key's quota; returns whether
    it was admitted and what is left (``None``: unlimited)."""

    def take(self, key_id: str) -> tuple[bool, int | None]: ...


# -- usage (services/usage.py) ------------------------------------------------------------------

ScopeCounts = dict[tuple[str, str, datetime], int]  # (key id, scope, day) -> valid uses


class UsageStore(Protocol):
    """Where hourly counts go (``storage/sql/usage.py``); ``add`` adds, never overwrites."""

    def add(self, uow: UnitOfWork, counts: Mapping[tuple[str, datetime, str], int]) -> None: ...
    def series(self, uow: UnitOfWork, key_id: str, start: datetime,
               end: datetime) -> list[tuple[datetime, str, int]]: ...
    def add_denials(self, uow: UnitOfWork, denials: Mapping[str, list[Denial]],
                    keep: int) -> None: ...
    def denials(self, uow: UnitOfWork, key_id: str, limit: int) -> list[Denial]: ...


class ScopeUsageStore(Protocol):
    """Where per-scope daily counts go; ``add_scopes`` adds, never overwrites."""

    def add_scopes(self, uow: UnitOfWork, counts: ScopeCounts) -> None: ...


# -- webhooks (core/webhooks.py) ----------------------------------------------------------------

class Sealer(Protocol):
    """Encrypts secrets the server must read back (webhook signing secrets), bound to a
    context string (the owning record's id) so a sealed value cannot be moved to another."""

    def seal(self, plain: str, context: str) -> str: ...
    def unseal(self, sealed: str, context: str) -> str: ...


class Resolver(Protocol):
    """Host name to IP addresses (all of them)."""

    def resolve(self, host: str, port: int) -> list[str]: ...


class WebhookSender(Protocol):
    """Sends one signed request and reports what happened; never raises for network errors."""

    def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome: ...


class WebhookRepo(Protocol):
    def add(self, webhook: Webhook) -> None: ...
    def get(self, tenant_id: str, webhook_id: str, *, for_update: bool = False) -> (
        Webhook | None
    ): ...
    def update(self, webhook: Webhook) -> None: ...
    def delete(self, tenant_id: str, webhook_id: str) -> None: ...
    def page(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[Webhook]: ...
    def subscribers(self, tenant_id: str) -> list[Webhook]: ...
    # the outbox
    def add_event(self, event_id: str, tenant_id: str, event_type: str, payload: str,
                  at: datetime) -> None: ...
    def add_delivery(self, delivery: Delivery) -> None: ...
    def delivery(self, webhook_id: str, delivery_id: str) -> Delivery | None: ...
    def deliveries(self, webhook_id: str, *, status: str | None, limit: int,
                   cursor: str | None) -> Page[Delivery]: ...
    def update_delivery(self, delivery: Delivery) -> None: ...
    def due(self, now: datetime) -> bool: ...
    def claim(self, owner: str, now: datetime, lease_until: datetime,
              limit: int) -> list[Claimed]: ...
    def record(self, delivery_id: str, owner: str, attempt: Outcome, now: datetime, *,
               status: DeliveryStatus, next_attempt_at: datetime | None) -> bool: ...
    def mark_success(self, webhook_id: str) -> None: ...
    def prune(self, before: datetime) -> int: ...
    def backlog(self) -> tuple[int, datetime | None]:
        """Pending deliveries of every tenant, and when the oldest was created."""
        ...


WebhookRepos = Callable[[UnitOfWork], WebhookRepo]


class EventSink(Protocol):
    """Writes an event to the outbox in the caller's transaction."""

    def emit(self, uow: UnitOfWork, event_type: str, tenant_id: str,
             subject: dict[str, Any], actor: str) -> str | None: ...


# -- backup (services/backup.py) ----------------------------------------------------------------

class BackupRepo(Protocol):
    """Rows of every table a backup holds, as JSON-ready dicts, in an order that restores
    (a row's references come before it). Secrets are never among them: only digests, password
    hashes and sealed values, exactly as stored."""

    def sections(self) -> list[str]: ...
    def columns(self, section: str) -> set[str]: ...
    def read(self, section: str, tenant_id: str | None) -> Iterator[tuple[dict[str, Any], bool]]:
        """(row, shared): a shared row (the scope catalogue, another owner's app a tenant is
        connected to) is kept as it is when the target already holds it."""
        ...
    def key(self, section: str, row: dict[str, Any]) -> str:
        """The row's primary key as text (parts joined by ``/``)."""
        ...
    def existing(self, section: str, rows: list[dict[str, Any]]) -> list[str]:
        """The primary keys of ``rows`` the database already holds."""
        ...
    def insert(self, section: str, rows: list[dict[str, Any]]) -> None: ...


BackupRepos = Callable[[UnitOfWork], BackupRepo]
