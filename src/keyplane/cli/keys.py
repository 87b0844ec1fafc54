"""``keyplane keys create|list|show|edit|rotate|revoke|duplicate``."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Annotated, Any

import typer

from keyplane.cli.actor import CLI
from keyplane.cli.main import JsonOpt, handled, keys_app, opened
from keyplane.cli.output import console, emit_json, fail, fields, secret_notice, table
from keyplane.core import sealed
from keyplane.core.views import key_out, ts
from keyplane.services.leaks import LeakReport

TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant id (Location ID).")]
OperatorOpt = Annotated[bool, typer.Option("--operator",
                                           help="An operator (platform) key, e.g. a verifier.")]


def _target(tenant: str | None, operator: bool) -> str | None:
    if operator == (tenant is not None):
        fail("give exactly one of --tenant or --operator", code=2)
    return tenant


ShareOpt = Annotated[bool, typer.Option(
    "--share", help="Print a one-time share link (<KEYPLANE_PUBLIC_URL>/s/<id>#<key>) instead "
    "of the secret: the secret is encrypted here and the link opens once.")]
ShareForOpt = Annotated[int, typer.Option(
    "--share-expires-in", min=60, max=7 * 86400,
    help="Seconds until the share link expires (default 24 h, at most 7 days)")]


def _share(kp: Any, tenant: str | None, operator: bool, secret: str, expires_in: int,
           note: str) -> dict[str, Any]:
    """Seal ``secret`` locally and store only the ciphertext; the link carries the key."""
    box = sealed.seal(secret)
    share = kp.shares.create(CLI, tenant, {"ciphertext": box.ciphertext,
                                              "expires_in_seconds": expires_in,
                                              "note": note}, operator=operator)
    return {"id": share.id, "url": f"{kp.settings.base_url}/s/{share.id}#{box.key}",
            "expires_at": ts(share.expires_at)}


def _show_issued(out: dict[str, Any], json_out: bool, title: str,
                 share: dict[str, Any] | None = None) -> None:
    if share is not None:  # the link carries the secret: neither it nor its note is shown
        out = {k: v for k, v in out.items() if k not in ("key", "note")}
    if json_out:
        emit_json(out if share is None else {**out, "share": share})
        return
    fields(title, {k: v for k, v in out.items() if k != "note"})  # secret_notice says it
    if share is None:
        secret_notice(out["key"])
    else:
        console.print("\n[bold yellow]Send this one-time link (it opens once, until "
                      f"{share['expires_at']}):[/]")
        console.print(share["url"], soft_wrap=True, highlight=False, markup=False)


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
    share: ShareOpt = False,
    share_expires_in: ShareForOpt = 86400,
    json_out: JsonOpt = False,
) -> None:
    """Create a key. The secret is printed once (or handed over with --share)."""
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
    with opened() as kp:
        if tid is not None and owner is None:
            body["owner_id"] = kp.keys.default_owner(CLI, tid)
        issued = kp.keys.create(CLI, tid, body, operator=operator)
        link = (_share(kp, tid, operator, issued.secret, share_expires_in,
                       f"key {issued.key.name}") if share else None)
    _show_issued(key_out(issued.key, issued.secret), json_out, "key created", link)


@keys_app.command("list")
@handled
def list_keys(tenant: TenantOpt = None, operator: OperatorOpt = False,
              owner: Annotated[str | None, typer.Option()] = None,
              q: Annotated[str | None, typer.Option("--q", help="Search name/description")] = None,
              limit: int = 200, json_out: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    tid = _target(tenant, operator)
    with opened() as kp:
        page = kp.keys.list(CLI, tid, owner_id=owner, q=q, limit=limit, operator=operator)
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
    with opened() as kp:
        out = key_out(kp.keys.get(CLI, tid, key_id, operator=operator))
    emit_json(out) if json_out else fields("key", out)


@keys_app.command("rotate")
@handled
def rotate(key_id: str, tenant: TenantOpt = None, operator: OperatorOpt = False,
           grace_period_seconds: Annotated[int, typer.Option(
               help="How long the old secret keeps working (0 = it dies now)")] = 604800,
           share: ShareOpt = False, share_expires_in: ShareForOpt = 86400,
           json_out: JsonOpt = False) -> None:
    """Issue a new secret; the old one works until the grace period ends."""
    tid = _target(tenant, operator)
    with opened() as kp:
        issued = kp.keys.rotate(CLI, tid, key_id,
                                {"grace_period_seconds": grace_period_seconds},
                                operator=operator)
        link = (_share(kp, tid, operator, issued.secret, share_expires_in,
                       f"key {issued.key.name} (rotated)") if share else None)
    _show_issued(key_out(issued.key, issued.secret), json_out, "key rotated", link)


@keys_app.command("revoke")
@handled
def revoke(key_id: str, tenant: TenantOpt = None, operator: OperatorOpt = False,
           json_out: JsonOpt = False) -> None:
    """Revoke a key: immediate and irreversible."""
    tid = _target(tenant, operator)
    with opened() as kp:
        kp.keys.revoke(CLI, tid, key_id, operator=operator)
    emit_json({"id": key_id, "revoked": True}) if json_out else print(f"revoked {key_id}")


@keys_app.command("duplicate")
@handled
def duplicate(key_id: str, name: Annotated[str | None, typer.Option()] = None,
              tenant: TenantOpt = None, operator: OperatorOpt = False,
              json_out: JsonOpt = False) -> None:
    """A new key with the same settings and a new secret."""
    tid = _target(tenant, operator)
    body = {"name": name} if name else {}
    with opened() as kp:
        issued = kp.keys.duplicate(CLI, tid, key_id, body, operator=operator)
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
    with opened() as kp:
        out = key_out(kp.keys.update(CLI, tid, key_id, body, operator=operator))
    emit_json(out) if json_out else fields("key", out)


@keys_app.command("report-leak")
@handled
def report_leak(
    key: Annotated[str | None, typer.Argument(
        help="The leaked secret. Prefer --stdin: an argument stays in your shell history.")]
    = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the secret from standard input "
                                        "(recommended: it stays out of shell history)")] = False,
    url: Annotated[str, typer.Option(help="Where it was found, e.g. a chat message link")] = "",
    source: Annotated[str, typer.Option(help="What kind of place, e.g. chat, email")] = "manual",
    json_out: JsonOpt = False,
) -> None:
    """Report a secret found exposed (a chat log, an email): it is looked up by digest and the
    tenant's policy applied (revoke at once, or lock). Prefer:
    pbpaste | keyplane keys report-leak --stdin --url <where>"""
    if stdin == (key is not None):
        fail("give the secret either as an argument or with --stdin (recommended)", code=2)
    raw = sys.stdin.read().strip() if stdin else (key or "").strip()
    if not raw:
        fail("no secret given", code=2)
    with opened() as kp:
        actor = replace(CLI, name="cli:report-leak")
        [outcome] = kp.leaks.handle(actor, [LeakReport(token=raw, type="manual", url=url,
                                                       source=source)])
    out = outcome.out()
    if json_out:
        emit_json(out)
    elif not outcome.found:
        print("not a secret Keyplane issued (or no longer stored): nothing to do")
    else:
        what = {"revoked": "revoked now", "locked": "locked now (unlock it after rotating)",
                "already_revoked": "was already revoked",
                "already_locked": "was already locked"}.get(outcome.action, outcome.action)
        print(f"{outcome.kind} {outcome.id}"
              + (f" ({outcome.name})" if outcome.name else "")
              + (f" of tenant {outcome.tenant_id}" if outcome.tenant_id else "")
              + f": {what}; the leak is recorded in the audit log and the key's detail")
