"""Fixtures: every storage-backed test runs on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keyplane.bootstrap import Keyplane, build
from keyplane.config import Settings
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.web.app import create_app
from tests.smtp_server import MailServer
from tests.support import (
    REQUIRE_SERVICES,
    RunningServer,
    SettableClock,
    postgres_available,
    postgres_schema,
    redis_available,
    sqlite_url,
    start_server,
)


def _browser_walk_on_postgres(item: pytest.Item) -> bool:
    """A browser walk (tests/integration/test_*_browser.py) on PostgreSQL: the walks check
    pages, focus and accessibility, which do not depend on the database; every storage path
    they use runs on both databases in the HTTP-level tests, so they run on SQLite only."""
    callspec = getattr(item, "callspec", None)
    return (item.path.name.endswith("_browser.py") and callspec is not None
            and callspec.params.get("database") == "postgres")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    walks = [item for item in items if _browser_walk_on_postgres(item)]
    if walks:
        config.hook.pytest_deselected(items=walks)
        items[:] = [item for item in items if item not in walks]
    if REQUIRE_SERVICES:
        return  # CI: a missing service is a failure, never a skip
    pg, redis = postgres_available(), redis_available()
    for item in items:
        if "postgres" in item.keywords and not pg:
            item.add_marker(pytest.mark.skip(reason="PostgreSQL is not answering"))
        if "redis" in item.keywords and not redis:
            item.add_marker(pytest.mark.skip(reason="Redis is not answering"))


@pytest.fixture(autouse=True, scope="session")
def cheap_argon2() -> Iterator[None]:
    """argon2id at its smallest cost for the passwords this test process hashes (1 ms instead
    of ~200 ms each: Django's test settings make the same choice), so the suite's thousands of
    sign-ins stay within CI's time. It is still pwdlib's argon2id; the production parameters
    are checked by tests/unit/test_passwords.py, and every `keyplane serve` process the tests
    start uses them."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from keyplane.services import passwords

    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    production = passwords._hasher
    passwords._hasher = lambda: cheap  # type: ignore[assignment]
    try:
        yield
    finally:
        passwords._hasher = production  # type: ignore[assignment]


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    """A real SMTP server on loopback; pass ``smtp_url=mail_server.url`` to the settings."""
    server = MailServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(url, schema) of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path), None
    else:
        with postgres_schema() as (url, schema):
            yield url, schema


def make_settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "database_url": url,
                              "usage_flush_seconds": 0.2}
    values.update(overrides)
    return Settings(**values)


@contextmanager
def serving(url: str, schema: str | None, tmp_path: Path, clock: SettableClock | None = None,
            **overrides: Any) -> Iterator[tuple[Keyplane, httpx2.Client]]:
    """A test's own Keyplane (these settings) served on a loopback port, and a client for it."""
    kp = build(make_settings(tmp_path, url, **overrides), clock=clock, schema=schema,
               migrate_db=True)
    kp.start()
    running = start_server(create_app(kp, manage_lifecycle=False))
    try:
        with httpx2.Client(base_url=running.url, timeout=30) as http:
            yield kp, http
    finally:
        running.stop()
        kp.close()


@pytest.fixture
def keyplane(database: tuple[str, str | None], tmp_path: Path,
             clock: SettableClock) -> Iterator[Keyplane]:
    url, schema = database
    kp = build(make_settings(tmp_path, url), clock=clock, schema=schema, migrate_db=True)
    kp.start()
    try:
        yield kp
    finally:
        kp.close()


@dataclass
class Tenant:
    id: str
    admin_id: str
    admin_email: str
    admin_password: str
    management_key: str  # keys/members/tenant:write and every data scope, over plain HTTP


def data_writes(kp: Keyplane) -> list[str]:
    """Every data scope's Edit (which implies View): what a management key needs to hand out
    data scopes, since a key never grants more than its creator holds."""
    return sorted(s for s in kp.ctx.catalogue().data_scopes() if s.endswith(":write"))


def make_tenant(kp: Keyplane, name: str = "Acme", email: str | None = None) -> Tenant:
    tenant = kp.tenants.create(SYSTEM, {"name": name})
    email = email or f"admin-{tenant.id[-6:].lower()}@example.com"
    password = "correct horse battery staple"
    admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                 {"email": email, "role": "admin", "password": password})
    issued = kp.keys.create(SYSTEM, tenant.id, {
        "name": "ops", "owner_id": admin.id, "require_tls": False,
        "scopes": ["keys:write", "members:write", "tenant:write", *data_writes(kp)],
    })
    return Tenant(tenant.id, admin.id, email, password, issued.secret)


@pytest.fixture
def tenant(keyplane: Keyplane) -> Tenant:
    return make_tenant(keyplane)


@pytest.fixture
def verifier_key(keyplane: Keyplane) -> str:
    issued = keyplane.keys.create(SYSTEM, None, {"name": "gateway", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True)
    return issued.secret


@pytest.fixture
def operator_key(keyplane: Keyplane) -> str:
    issued = keyplane.keys.create(SYSTEM, None, {"name": "platform",
                                                 "scopes": ["platform:write", "keys:verify"],
                                                 "require_tls": False}, operator=True)
    return issued.secret


@pytest.fixture
def server(keyplane: Keyplane) -> Iterator[RunningServer]:
    """The real app served by uvicorn on a loopback port (lifecycle owned by the fixture)."""
    running = start_server(create_app(keyplane, manage_lifecycle=False))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
