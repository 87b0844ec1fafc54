"""A demo tenant for ``make serve``: created once, on an empty database."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from keyplane.bootstrap import Keyplane
from keyplane.core.model import PrincipalKind
from keyplane.core.rights import SYSTEM


@dataclass(frozen=True)
class DemoCredentials:
    tenant_id: str
    admin_email: str
    admin_password: str
    management_key: str
    verifier_key: str


def ensure_demo(kp: Keyplane) -> DemoCredentials | None:
    """Create the demo tenant if there is no tenant yet; the secrets are returned only now."""
    with kp.ctx.uow(readonly=True) as uow:
        if uow.tenants.page(limit=1, cursor=None).items:
            return None
    tenant = kp.tenants.create(SYSTEM, {"name": "Demo workspace"})
    password = secrets.token_urlsafe(12)
    admin = kp.principals.create(
        SYSTEM, tenant.id, PrincipalKind.MEMBER,
        {"email": "admin@example.com", "name": "Demo admin", "role": "admin",
         "password": password},
    )
    writes = sorted(s for s in kp.ctx.catalogue().data_scopes() if s.endswith(":write"))
    management = kp.keys.create(
        SYSTEM, tenant.id,
        {"name": "demo management key", "owner_id": admin.id,
         # a key grants only what its creator holds: this one may hand out every data scope
         "scopes": ["keys:write", "members:write", "tenant:write", *writes],
         "require_tls": False, "description": "created by make serve; plain HTTP allowed"},
    )
    verifier = kp.keys.create(
        SYSTEM, None, {"name": "demo verifier", "scopes": ["keys:verify"], "require_tls": False},
        operator=True,
    )
    return DemoCredentials(tenant.id, "admin@example.com", password, management.secret,
                           verifier.secret)
