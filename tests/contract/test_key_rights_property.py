"""Property: whatever its scopes and whatever it tries, a credential never ends up holding or
controlling a key that reaches beyond its own scopes (issue 8). Through the services, with
callers authenticated from real keys, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyplane.bootstrap import Keyplane
from keyplane.core import scopes as sc
from keyplane.core.errors import PermissionDenied, ValidationError
from keyplane.core.rights import SYSTEM
from keyplane.services.keys import IssuedKey
from keyplane.services.verification import Peer
from tests.conftest import Tenant

POOL = ["keys:read", "keys:write", "members:read", "members:write", "tenant:write",
        "contacts:read", "contacts:write", "payments:read", "payments:write"]
ACTIONS = ["create", "duplicate", "rotate", "rotate_now", "patch_scopes", "patch_name",
           "patch_ips", "unlock", "lock", "revoke"]
REDUCING = {"lock", "revoke"}

scope_sets = st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL))


@pytest.mark.slow
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caller_scopes=scope_sets, target_scopes=scope_sets, action=st.sampled_from(ACTIONS),
       new_scopes=scope_sets, locked=st.booleans())
def test_no_credential_reaches_beyond_its_own_scopes(
    keyplane: Keyplane, tenant: Tenant, caller_scopes: list[str], target_scopes: list[str],
    action: str, new_scopes: list[str], locked: bool
) -> None:
    kp, tid = keyplane, tenant.id

    def key(scopes: list[str]) -> IssuedKey:
        return kp.keys.create(SYSTEM, tid, {"name": "k", "owner_id": tenant.admin_id,
                                            "scopes": scopes})

    caller = kp.verification.authenticate(key(caller_scopes).secret, Peer(None, True))
    target = key(target_scopes).key
    if locked:
        kp.keys.update(SYSTEM, tid, target.id, {"enabled": False})
    before = kp.keys.get(SYSTEM, tid, target.id)
    held = sc.expand(caller.scopes)
    calls: dict[str, Any] = {
        "create": lambda: kp.keys.create(caller, None, {"name": "n", "scopes": new_scopes}),
        "duplicate": lambda: kp.keys.duplicate(caller, None, target.id, {}),
        "rotate": lambda: kp.keys.rotate(caller, None, target.id, {}),
        "rotate_now": lambda: kp.keys.rotate(caller, None, target.id,
                                             {"grace_period_seconds": 0}),
        "patch_scopes": lambda: kp.keys.update(caller, None, target.id, {"scopes": new_scopes}),
        "patch_name": lambda: kp.keys.update(caller, None, target.id, {"name": "renamed"}),
        "patch_ips": lambda: kp.keys.update(caller, None, target.id, {"allowed_ips": []}),
        "unlock": lambda: kp.keys.update(caller, None, target.id, {"enabled": True}),
        "lock": lambda: kp.keys.update(caller, None, target.id, {"enabled": False}),
        "revoke": lambda: kp.keys.revoke(caller, None, target.id),
    }
    try:
        result = calls[action]()
    except (PermissionDenied, ValidationError):
        result = None
        refused = True
    else:
        refused = False

    # 1. any secret handed out belongs to a key within the caller's reach
    if isinstance(result, IssuedKey):
        assert sc.expand(result.key.scopes) <= held, (action, result.key.scopes, held)

    # 2. the target changed only by lock or revoke, unless the caller holds all it grants
    after = kp.keys.list(SYSTEM, tid, limit=200).items
    now = next((k for k in after if k.id == target.id), None)
    took_over = now is not None and (
        now.start != before.start or now.scopes != before.scopes or now.name != before.name
        or now.allowed_ips != before.allowed_ips or (now.enabled and not before.enabled)
    )
    if took_over:
        assert sc.expand(before.scopes) <= held, (action, before.scopes, held)
        assert sc.expand(now.scopes) <= held
    # 3. what only reduces access is always allowed to keys:write; the rest only within reach
    if "keys:write" in held:
        if action in REDUCING:
            assert not refused
        elif action in ("create", "patch_scopes"):
            within = sc.expand(new_scopes) <= held and (
                action == "create" or sc.expand(before.scopes) <= held)
            assert refused is not within, (action, new_scopes, before.scopes, held)
        else:
            assert refused is not (sc.expand(before.scopes) <= held), action
    else:
        assert refused
