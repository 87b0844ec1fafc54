"""The one place that wires settings into storage, caches, clock, hasher and services."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine

from keyplane.cache.local import VerificationCache
from keyplane.config import Settings
from keyplane.core.ports import Clock, SystemClock
from keyplane.core.tokens import Hasher, valid_prefix
from keyplane.peppers import load_peppers
from keyplane.services.audit import AuditService
from keyplane.services.catalogue import CatalogueService, load_toml
from keyplane.services.context import Context
from keyplane.services.keys import KeyService
from keyplane.services.principals import GroupService, PrincipalService
from keyplane.services.tenants import TenantService
from keyplane.services.usage import UsageRecorder
from keyplane.services.verify import Verifier
from keyplane.storage.sql import migrate
from keyplane.storage.sql.engine import SqlUnitOfWork, make_engine

log = logging.getLogger("keyplane")


@dataclass
class Keyplane:
    """Everything a process needs, built once from settings."""

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
    extras: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.catalogue.seed(
            load_toml(self.settings.scopes_file) if self.settings.scopes_file else None
        )
        self.usage.start()

    def stop(self) -> None:
        self.usage.stop()

    def close(self) -> None:
        self.stop()
        self.engine.dispose()


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    schema: str | None = None,
    migrate_db: bool = False,
) -> Keyplane:
    if not valid_prefix(settings.key_prefix):
        raise ValueError("KEYPLANE_KEY_PREFIX must be 2-16 lowercase letters or digits")
    clock = clock or SystemClock()
    engine = make_engine(
        settings.resolved_database_url, pool_size=settings.db_pool_size, schema=schema
    )
    if migrate_db:
        migrate.upgrade(engine)
    ctx = Context(
        uow=partial(SqlUnitOfWork, engine, clock),
        clock=clock,
        hasher=Hasher(load_peppers(settings)),
        key_prefix=settings.key_prefix,
    )
    usage = UsageRecorder(ctx, interval=settings.usage_flush_seconds)
    cache = VerificationCache(settings.cache_size, settings.cache_ttl_seconds)
    return Keyplane(
        settings=settings,
        engine=engine,
        ctx=ctx,
        tenants=TenantService(ctx),
        principals=PrincipalService(ctx),
        groups=GroupService(ctx),
        keys=KeyService(ctx),
        catalogue=CatalogueService(ctx),
        audit=AuditService(ctx),
        verifier=Verifier(ctx, cache, usage),
        usage=usage,
    )
