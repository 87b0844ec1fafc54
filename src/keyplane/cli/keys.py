"""``keyplane keys create|list|show|edit|rotate|revoke|duplicate``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keyplane.cli.main import JsonOpt, _keyplane, handled, keys_app
from keyplane.cli.output import emit_json, fail, fields, secret_notice, table
from keyplane.core.rights import SYSTEM
from keyplane.web.schemas import key_out

TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant id (Location ID).")]
OperatorOpt = Annotated[bool, typer.Option("--operator",
                                           help="An operator (platform) key, e.g. a verifier.")]


def _target(tenant: str | None, operator: bool) -> str | None:
    if operator == (tenant is not None):
        fail("give exactly one of --tenant or --operator", code=2)
    return tenant


def _show_issued(out: dict[str, Any], json_out: bool, title: str) -> None:
    if json_out:
        emit_json(out)
    else:
        fields(title, out)
        secret_notice(out["key"])


@keys_app.command("create")
@handled
def create(
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'Zapier'")],
    tenant: TenantOpt = None,
    operator: OperatorOpt = False,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="Scope (repeat)")] = None,
    owner: Annotated[str | None, typer.Option(help="Owner: member or service account id")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="Default: tenant policy (90)")] = None,
    never_expires: Annotated[bool, typer.Option(help="No expiry (if policy allows)")] = False,
    allowed_ip: Annotated[list[str] | None, typer.Option("--allowed-ip",
                                                         help="CIDR (repeat)")] = None,
    require_tls: Annotated[bool, typer.Option(help="Refuse plain HTTP use")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Create a key. The secret is printed once."""
    tid = _target(tenant, operator)
    body: dict[str, Any] = {"name": name, "scopes": list(scope or []),
                            "allowed_ips": list(allowed_ip or []), "require_tls": require_tls}
    if owner:
        body["owner_id"] = owner
    if description:
        body["description"] = description
    if never_expires:
        body["expires_in_days"] = None
    elif expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    kp = _keyplane()
    try:
        if tid is not None and owner is None:
            kp.tenants.get(SYSTEM, tid)  # an unknown tenant says so, not "no admin"
            admins = [p for p in kp.principals.list(SYSTEM, tid, kind=None, limit=200,
                                                     cursor=None).items
                      if p.role.value == "admin" and p.enabled]
            if not admins:
                fail("--owner is required: the tenant has no enabled admin to own the key",
                     code=2)
            body["owner_id"] = admins[-1].id  # the oldest admin
        issued = kp.keys.create(SYSTEM, tid, body, operator=operator)
    finally:
        kp.close()
    _show_issued(key_out(issued.key, issued.secret), json_out, "key created")


@keys_app.command("list")
@handled
def list_keys(tenant: TenantOpt = None, operator: OperatorOpt = False,
              owner: Annotated[str | None, typer.Option()] = None,
              q: Annotated[str | None, typer.Option("--q", help="Search name/description")] = None,
              limit: int = 200, json_out: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    tid = _target(tenant, operator)
    kp = _keyplane()
    page = kp.keys.list(SYSTEM, tid, owner_id=owner, q=q, limit=limit, operator=operator)
    kp.close()
    items = [key_out(k) for k in page.items]
    if json_out:
        emit_json({"items": items, "next_cursor": page.next_cursor})
    else:
        table("keys", ["id", "name", "start", "scopes", "enabled", "expires", "last used"],
              [(k["id"], k["name"], f"{k['prefix']}_{k['start']}…", " ".join(k["scopes"]),
                k["enabled"], k["expires_at"], k["last_used_at"]) for k in items])


@keys_app.command("show")
@handled
def show(key_id: str, tenant: TenantOpt = None, operator: OperatorOpt = False,
         json_out: JsonOpt = False) -> None:
    """Show one key."""
    tid = _target(tenant, operator)
    kp = _keyplane()
    out = key_out(kp.keys.get(SYSTEM, tid, key_id, operator=operator))
    kp.close()
    emit_json(out) if json_out else fields("key", out)


@keys_app.command("rotate")
@handled
def rotate(key_id: str, tenant: TenantOpt = None, operator: OperatorOpt = False,
           grace_period_seconds: Annotated[int, typer.Option(
               help="How long the old secret keeps working (0 = it dies now)")] = 604800,
           json_out: JsonOpt = False) -> None:
    """Issue a new secret; the old one works until the grace period ends."""
    tid = _target(tenant, operator)
    kp = _keyplane()
    issued = kp.keys.rotate(SYSTEM, tid, key_id, {"grace_period_seconds": grace_period_seconds},
                            operator=operator)
    kp.close()
    _show_issued(key_out(issued.key, issued.secret), json_out, "key rotated")


@keys_app.command("revoke")
@handled
def revoke(key_id: str, tenant: TenantOpt = None, operator: OperatorOpt = False,
           json_out: JsonOpt = False) -> None:
    """Revoke a key: immediate and irreversible."""
    tid = _target(tenant, operator)
    kp = _keyplane()
    kp.keys.revoke(SYSTEM, tid, key_id, operator=operator)
    kp.close()
    emit_json({"id": key_id, "revoked": True}) if json_out else print(f"revoked {key_id}")


@keys_app.command("duplicate")
@handled
def duplicate(key_id: str, name: Annotated[str | None, typer.Option()] = None,
              tenant: TenantOpt = None, operator: OperatorOpt = False,
              json_out: JsonOpt = False) -> None:
    """A new key with the same settings and a new secret."""
    tid = _target(tenant, operator)
    body = {"name": name} if name else {}
    kp = _keyplane()
    issued = kp.keys.duplicate(SYSTEM, tid, key_id, body, operator=operator)
    kp.close()
    _show_issued(key_out(issued.key, issued.secret), json_out, "key duplicated")


@keys_app.command("edit")
@handled
def edit(key_id: str, tenant: TenantOpt = None, operator: OperatorOpt = False,
         name: Annotated[str | None, typer.Option()] = None,
         scope: Annotated[list[str] | None, typer.Option("--scope")] = None,
         enabled: Annotated[bool | None, typer.Option("--enabled/--locked")] = None,
         json_out: JsonOpt = False) -> None:
    """Rename, change scopes, or lock/unlock a key."""
    tid = _target(tenant, operator)
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if scope is not None:
        body["scopes"] = scope
    if enabled is not None:
        body["enabled"] = enabled
    kp = _keyplane()
    out = key_out(kp.keys.update(SYSTEM, tid, key_id, body, operator=operator))
    kp.close()
    emit_json(out) if json_out else fields("key", out)
