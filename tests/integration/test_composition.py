"""The composition root (issue 10, item 4): ``bootstrap.build()`` hands every part its
collaborators when it builds it (the connected-app services are typed fields, their access
tokens verify on the keys' path), the CLI always closes what it opened, and the rule for who
owns a key the CLI makes without ``--owner`` is the key service's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.errors import NotFound, ValidationError
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM
from keyplane.services.connections import CONNECTION_ID_PREFIX
from tests.conftest import Tenant
from tests.support import SettableClock, sqlite_url


def test_the_connected_app_services_are_wired_when_built(keyplane: Keyplane) -> None:
    kp = keyplane
    # OAuth access tokens on the verify path; their uses flushed and attributed with keys'
    assert kp.verifier.loaders[kp.prefixes.access_token] == kp.connections.load_access_token
    assert kp.connections.record_usage in kp.usage.sinks
    assert kp.usage_reports.owners[CONNECTION_ID_PREFIX] == kp.connections.owner_of
    assert kp.leaks.connections is kp.connections  # a leaked token ends its connection
    assert kp.hygiene.before_run == (kp.usage.flush,)
    assert kp.hygiene.after_run == (kp.audit.prune,)
    assert kp.feed.lag_observer == kp.invalidation_lag.observe
    # the sign-in parts share one throttle; the issuer is the base URL, byte for byte
    assert kp.sessions.second_factor is kp.two_factor
    assert kp.issuer == kp.settings.base_url
    with pytest.raises(dataclasses.FrozenInstanceError):
        kp.apps = kp.apps  # type: ignore[misc]  # nothing is added or swapped afterwards


def test_a_key_made_without_an_owner_belongs_to_the_oldest_enabled_admin(
        keyplane: Keyplane, tenant: Tenant, clock: SettableClock) -> None:
    kp = keyplane
    clock.advance(seconds=1)
    second = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                  {"email": "second@example.com", "role": "admin"})
    clock.advance(seconds=1)
    kp.principals.create(SYSTEM, tenant.id, PrincipalKind.SERVICE_ACCOUNT,
                         {"name": "robot", "role": "admin"})
    assert kp.keys.default_owner(SYSTEM, tenant.id) == tenant.admin_id
    kp.principals.update(SYSTEM, tenant.id, tenant.admin_id, {"enabled": False})
    assert kp.keys.default_owner(SYSTEM, tenant.id) == second.id
    with pytest.raises(NotFound):
        kp.keys.default_owner(SYSTEM, "loc_nope")
    empty = kp.tenants.create(SYSTEM, {"name": "No admin"})
    kp.principals.create(SYSTEM, empty.id, PrincipalKind.MEMBER,
                         {"email": "m@example.com", "role": "member"})
    with pytest.raises(ValidationError, match="no enabled admin"):
        kp.keys.default_owner(SYSTEM, empty.id)


def test_the_cli_closes_keyplane_when_a_command_fails(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from keyplane.cli.main import opened

    monkeypatch.setenv("KEYPLANE_DATABASE_URL", sqlite_url(tmp_path))
    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path / "data"))
    closed: list[Keyplane] = []
    close = Keyplane.close
    monkeypatch.setattr(Keyplane, "close", lambda kp: (closed.append(kp), close(kp))[1])
    with pytest.raises(NotFound), opened() as kp:
        kp.tenants.get(SYSTEM, "loc_nope")
    assert closed == [kp]
    with opened() as kp:
        assert kp.tenants.list(SYSTEM, limit=10, cursor=None).items == []
    assert closed[-1] is kp and len(closed) == 2
