"""The one place that wires settings into storage, caches, clock, hasher and services."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from sqlalchemy.engine import Engine

from keyplane.cache.local import VerificationCache
from keyplane.cache.ratelimit import AttemptCounts, KeyRateLimits, LimitStore, parse_limit
from keyplane.cache.redis_bus import Propagation
from keyplane.config import Settings
from keyplane.core.accounts import PartnerSignup
from keyplane.core.apps import CredentialPrefixes
from keyplane.core.changes import RESET, remote_delivery
from keyplane.core.outage import DatabaseHealth
from keyplane.core.ports import Clock, SystemClock
from keyplane.core.tokens import Hasher, valid_prefix
from keyplane.core.webhooks import RetryPolicy
from keyplane.mail import mailer_from
from keyplane.metrics import InvalidationLag
from keyplane.outbound import HttpSender, SystemResolver
from keyplane.peppers import load_peppers
from keyplane.sealing import PepperSealer
from keyplane.services.accounts import AccountService
from keyplane.services.apps import AppService
from keyplane.services.audit import AuditService
from keyplane.services.automations import AutomationService
from keyplane.services.backup import BackupService
from keyplane.services.catalogue import CatalogueService, load_toml
from keyplane.services.changes import ChangeFeed
from keyplane.services.connections import CONNECTION_ID_PREFIX, ConnectionService, Lifetimes
from keyplane.services.context import Context, LocalBus
from keyplane.services.delivery import DeliveryWorker
from keyplane.services.expiry import ExpiryReminders
from keyplane.services.hygiene import HygieneService
from keyplane.services.imports import ImportService
from keyplane.services.keys import KeyService
from keyplane.services.leaks import LeakService
from keyplane.services.legacy import LegacyKeys
from keyplane.services.links import LinkService
from keyplane.services.principals import GroupService, PrincipalService
from keyplane.services.refusals import RefusalRecorder
from keyplane.services.scanning import ScanningKeys, source_from
from keyplane.services.sessions import SessionService
from keyplane.services.shares import ShareService
from keyplane.services.signals import KeySignals
from keyplane.services.tenants import TenantService
from keyplane.services.throttle import FailureThrottle
from keyplane.services.two_factor import TwoFactorService
from keyplane.services.usage import UsageRecorder, UsageService
from keyplane.services.verification import VerifyService
from keyplane.services.verify import Verifier
from keyplane.services.webhooks import Outbox, WebhookService
from keyplane.storage.sql import migrate
from keyplane.storage.sql.account_repositories import account_repos
from keyplane.storage.sql.backup import backup_repo
from keyplane.storage.sql.changefeed import SqlChangeSource
from keyplane.storage.sql.drf import count_drf, read_drf
from keyplane.storage.sql.engine import SqlUnitOfWork, make_engine, watch
from keyplane.storage.sql.events import events_repo
from keyplane.storage.sql.hygiene import hygiene_repo
from keyplane.storage.sql.imports import SqlScopeUsageStore, imports_repo
from keyplane.storage.sql.notify import ChangeListener
from keyplane.storage.sql.oauth_repositories import connected_repos
from keyplane.storage.sql.safety import safety_repos
from keyplane.storage.sql.sign_in import sign_in_repos
from keyplane.storage.sql.usage import SqlQuotaStore, SqlUsageStore
from keyplane.storage.sql.webhook_repositories import webhook_repo

log = logging.getLogger("keyplane")

# ``keyplane import drf-api-key``'s source: another project's database, read only (the CLI
# reaches this storage adapter through the composition root, like every other)
__all__ = ["Keyplane", "build", "count_drf", "read_drf"]


@dataclass(frozen=True)
class Keyplane:
    """Everything a process needs, built once from settings by :func:`build`: every part is
    a typed field, built in dependency order and given its collaborators by its constructor
    (nothing is added to a part after it is built, nothing is built on first use)."""

    settings: Settings
    engine: Engine
    ctx: Context
    tenants: TenantService
    principals: PrincipalService
    groups: GroupService
    keys: KeyService
    catalogue: CatalogueService
    audit: AuditService
    verifier: Verifier
    usage: UsageRecorder
    usage_reports: UsageService
    feed: ChangeFeed  # the change log, read by every worker (and GET /v1/changes)
    propagation: Propagation  # other workers' changes reach this one's caches
    limits: LimitStore  # rate-limit counts: Redis or memory
    throttle: FailureThrottle  # the failed-attempt policy: credentials, sign-ins, codes
    verification: VerifyService  # may this request pass: /v1/verify and every bearer caller
    shares: ShareService  # one-time share links
    leaks: LeakService  # leaked secrets: revoke or lock, record where
    scanning_keys: ScanningKeys  # the code host's public keys for signed leak reports
    webhooks: WebhookService
    deliveries: DeliveryWorker  # sends the outbox; runs in serve (unless disabled) and worker
    sender: HttpSender
    hygiene: HygieneService  # the keys report and the unused-key policy's job
    backup: BackupService  # keyplane export / restore
    expiry: ExpiryReminders  # key.expiring / key.expired; runs in serve and worker
    automations: AutomationService  # /v1/automations and POST /v1/events
    imports: ImportService  # keyplane import (drf-api-key, csv, keyplane)
    invalidation_lag: InvalidationLag  # change committed -> applied here (/metrics)
    # connected apps (OAuth 2.0) and console accounts; the OAuth server reads the first five
    # through oauth.wiring.ConnectedApps
    prefixes: CredentialPrefixes  # of OAuth codes, tokens and client ids (from key_prefix)
    issuer: str  # the RFC 8414 issuer: settings.base_url, byte for byte
    apps: AppService  # partner apps and the operator's decision
    connections: ConnectionService  # a tenant's grant to an app; its tokens verify like keys
    sessions: SessionService  # members' browser sessions
    two_factor: TwoFactorService  # TOTP second factor and recovery codes
    links: LinkService  # invitations and password resets (one-time links)
    accounts: AccountService  # operator staff and partner developers (console accounts)

    def start(self) -> None:
        self.catalogue.seed(
            load_toml(self.settings.scopes_file) if self.settings.scopes_file else None
        )
        self.usage.start()
        self.audit.refusals.start()
        self.propagation.start()
        if self.settings.webhook_worker:
            self.deliveries.start()
        if self.settings.hygiene_interval_seconds > 0:
            self.hygiene.start()
        if self.settings.expiry_interval_seconds > 0:
            self.expiry.start()

    def stop(self) -> None:
        self.expiry.stop()
        self.hygiene.stop()
        self.deliveries.stop()
        self.propagation.stop()
        self.usage.stop()
        self.audit.refusals.stop()

    def close(self) -> None:
        self.stop()
        self.limits.close()
        self.sender.close()
        self.engine.dispose()

    def schema_revision(self) -> str | None:
        """The database's applied migration (``keyplane db current``, backups)."""
        return migrate.current(self.engine)

    @staticmethod
    def schema_head() -> str | None:
        """The newest migration this version ships."""
        return migrate.head()

    def __enter__(self) -> Keyplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    schema: str | None = None,
    migrate_db: bool = False,
) -> Keyplane:
    """Builds every part in dependency order: storage, the change feed and context; connected
    apps (whose access tokens verify on the keys' path); verification and usage; then the
    services and background jobs that use them. Each part gets its collaborators here."""
    if not valid_prefix(settings.key_prefix):
        raise ValueError("KEYPLANE_KEY_PREFIX must be 2-16 lowercase letters or digits")
    clock = clock or SystemClock()
    # -- storage, context --------------------------------------------------------------------
    engine = make_engine(
        settings.resolved_database_url, pool_size=settings.db_pool_size, schema=schema
    )
    bus = LocalBus()  # this process's changes, after commit, to its caches and the feed
    lag = InvalidationLag()
    feed = ChangeFeed(SqlChangeSource(engine), bus, period=settings.change_poll_seconds,
                      lag_observer=lag.observe)
    health = DatabaseHealth(
        clock, settings.db_outage_grace_seconds,
        on_lost=[partial(_lost, settings.db_outage_grace_seconds, feed)],
        on_recovered=[partial(_recovered, bus, feed)])
    watch(engine, health)
    if migrate_db:
        migrate.upgrade(engine)
    peppers = load_peppers(settings)
    policy = RetryPolicy(
        base=timedelta(seconds=settings.webhook_retry_base_seconds),
        cap=timedelta(seconds=settings.webhook_retry_max_seconds),
        window=timedelta(seconds=settings.webhook_retry_window_seconds),
        disable_after=timedelta(seconds=settings.webhook_disable_after_seconds),
    )
    outbox = Outbox(webhook_repo, clock, policy)
    ctx = Context(
        uow=partial(SqlUnitOfWork, engine, clock),
        clock=clock,
        hasher=Hasher(peppers),
        key_prefix=settings.key_prefix,
        bus=bus,
        events=outbox,
        mailer=mailer_from(settings.smtp_url.get_secret_value() if settings.smtp_url else None,
                           settings.mail_from),
        health=health,
    )
    sealer = PepperSealer(peppers)
    allow_private = settings.webhook_allow_private_targets
    sender = HttpSender(timeout=settings.webhook_timeout_seconds,
                        max_response_bytes=settings.webhook_max_response_bytes,
                        allow_private=allow_private,
                        max_connections=max(20, settings.webhook_concurrency))
    # -- connected apps and console accounts -------------------------------------------------
    prefixes = CredentialPrefixes.derive(settings.key_prefix)
    issuer = settings.base_url
    connections = ConnectionService(
        ctx, connected_repos, prefixes,
        Lifetimes(access_token=timedelta(seconds=settings.oauth_access_token_seconds),
                  code=timedelta(seconds=settings.oauth_code_seconds),
                  refresh_family=timedelta(days=settings.oauth_refresh_token_days)),
        tokens_require_tls=issuer.startswith("https://"))
    limits = LimitStore(settings.redis_url, prefix=settings.redis_prefix,
                        timeout=settings.redis_timeout_seconds)
    # the one failed-attempt policy: bearer credentials, guesses at /v1/verify, sign-ins, codes
    throttle = FailureThrottle(
        ctx, AttemptCounts(limits), limit=settings.failure_limit,
        window=settings.failure_window_seconds,
        signin_per_account=parse_limit(settings.signin_limit_per_account),
        signin_per_address=parse_limit(settings.signin_limit_per_ip))
    two_factor = TwoFactorService(ctx, sign_in_repos, sealer, throttle)
    session_lifetime = timedelta(seconds=settings.session_lifetime_seconds)
    # -- verification, usage, propagation ----------------------------------------------------
    usage_store = SqlUsageStore()
    keys = KeyService(ctx)
    usage = UsageRecorder(
        ctx, interval=settings.usage_flush_seconds, store=usage_store,
        scope_store=SqlScopeUsageStore(),
        sinks=[connections.record_usage],  # connections' uses, in the same flush
        watchers=[KeySignals(
            ctx, events_repo, known_networks=settings.known_networks_per_key,
            burst_limit=settings.denied_burst_limit,
            burst_window=timedelta(seconds=settings.denied_burst_window_seconds))])
    cache = VerificationCache(settings.cache_size, settings.cache_ttl_seconds,
                              answer_size=settings.verify_answer_cache_size)
    verifier = Verifier(
        ctx, cache, usage, LegacyKeys(ctx, imports_repo),
        # OAuth access tokens on the same verify path as keys
        loaders={prefixes.access_token: connections.load_access_token},
        rate_check=KeyRateLimits(limits, SqlQuotaStore(engine)),
        rate_check_blocking=limits.blocking)
    propagation = Propagation(
        bus, cache, feed, redis_url=settings.redis_url,
        channel=f"{settings.redis_prefix}:changes", redis_timeout=settings.redis_timeout_seconds,
        poll_seconds=settings.change_poll_seconds,
        poll_redis_seconds=settings.change_poll_redis_seconds,
        degraded_ttl=settings.degraded_cache_ttl_seconds,
        listener=partial(ChangeListener, engine)
        if settings.change_notify and engine.dialect.name == "postgresql" else None,
        lag_observer=lag.observe,
    )
    # -- the services that use them ----------------------------------------------------------
    audit = AuditService(ctx, RefusalRecorder(ctx, interval=settings.usage_flush_seconds))
    verification = VerifyService(verifier, throttle)
    return Keyplane(
        settings=settings,
        engine=engine,
        ctx=ctx,
        tenants=TenantService(ctx),
        principals=PrincipalService(ctx, connected_repos),
        groups=GroupService(ctx),
        keys=keys,
        catalogue=CatalogueService(ctx),
        audit=audit,
        verifier=verifier,
        usage=usage,
        usage_reports=UsageService(ctx, keys, usage_store, usage,
                                   owners={CONNECTION_ID_PREFIX: connections.owner_of}),
        feed=feed,
        propagation=propagation,
        limits=limits,
        throttle=throttle,
        verification=verification,
        shares=ShareService(ctx, safety_repos),
        # a leaked OAuth token ends its connection
        leaks=LeakService(ctx, safety_repos, connections),
        scanning_keys=ScanningKeys(source_from(settings.secret_scanning_keys_file,
                                               settings.secret_scanning_keys_url), clock),
        webhooks=WebhookService(ctx, webhook_repo, sealer, SystemResolver(), outbox,
                                allow_private=allow_private),
        deliveries=DeliveryWorker(
            ctx, webhook_repo, outbox, sender, sealer, policy,
            lease=timedelta(seconds=settings.webhook_lease_seconds),
            concurrency=settings.webhook_concurrency,
            poll_seconds=settings.webhook_poll_seconds,
            retention=timedelta(days=settings.webhook_retention_days)),
        sender=sender,
        hygiene=HygieneService(
            ctx, hygiene_repo, keys,
            interval=timedelta(seconds=settings.hygiene_interval_seconds or 3600),
            before_run=[usage.flush],  # this process's uses count before deciding
            after_run=[audit.prune]),  # each tenant's audit retention, same lease
        backup=BackupService(ctx, backup_repo),
        expiry=ExpiryReminders(
            ctx, events_repo, base_url=settings.base_url,
            interval=timedelta(seconds=settings.expiry_interval_seconds or 900)),
        automations=AutomationService(ctx, events_repo, webhook_repo, outbox,
                                      verification.identify, connected_repos),
        imports=ImportService(ctx, imports_repo),
        invalidation_lag=lag,
        prefixes=prefixes,
        issuer=issuer,
        apps=AppService(ctx, connected_repos, prefixes),
        connections=connections,
        sessions=SessionService(ctx, connected_repos, throttle,
                                lifetime=session_lifetime, second_factor=two_factor),
        two_factor=two_factor,
        links=LinkService(ctx, sign_in_repos, connected_repos, throttle,
                          base_url=issuer),
        accounts=AccountService(ctx, account_repos, throttle, lifetime=session_lifetime,
                                signup=PartnerSignup(settings.partner_signup),
                                invite_lifetime=timedelta(days=settings.partner_invite_days),
                                base_url=issuer),
    )


def _lost(grace_seconds: float, feed: ChangeFeed) -> None:
    """Said by a process that serves verifications (its change feed runs); a CLI command
    reports the failed command instead."""
    if feed.started:
        log.warning("the database is unreachable: cached verifications are served for %gs, "
                    "then verification fails closed until it answers", grace_seconds)


def _recovered(bus: LocalBus, feed: ChangeFeed) -> None:
    """The database answers again: a change may have been committed that this process never
    heard of (its publish lost with the connection), so drop every cached verification and
    read the change log soon."""
    log.warning("the database answers again")
    with remote_delivery():
        bus.publish(RESET, "*")
    feed.wake()
