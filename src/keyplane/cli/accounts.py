"""``keyplane operators create`` (operator staff who sign in to the console) and
``keyplane partners invite`` (a sign-up link for a partner developer)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from keyplane.cli.main import JsonOpt, app, handled, opened
from keyplane.cli.output import console, emit_json, fail, fields, table
from keyplane.core.rights import SYSTEM

operators_app = typer.Typer(help="Operator staff: they sign in to the console's operator pages.",
                            no_args_is_help=True)
partners_app = typer.Typer(help="Partner developers: they register apps for your approval.",
                           no_args_is_help=True)
app.add_typer(operators_app, name="operators")
app.add_typer(partners_app, name="partners")


def account_out(account: Any) -> dict[str, Any]:
    return {"id": account.id, "object": "account", "kind": account.kind.value,
            "email": account.email, "name": account.name, "enabled": account.enabled,
            "created_at": account.created_at.isoformat().replace("+00:00", "Z")}


@operators_app.command("create")
@handled
def create(
    email: Annotated[str, typer.Option(help="Sign-in email")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from stdin (required)")] = False,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an operator staff account. Staff sign in at /signin and act as the operator
    (tenants, partner apps, the scope catalogue, operator keys) without holding a key."""
    from keyplane.core.accounts import AccountKind

    if not password_stdin:
        fail("give the password on stdin with --password-stdin", code=2)
    body: dict[str, Any] = {"email": email, "password": sys.stdin.readline().rstrip("\r\n")}
    if name:
        body["name"] = name
    with opened() as kp:
        out = account_out(kp.accounts.create(SYSTEM, AccountKind.OPERATOR, body))
    emit_json(out) if json_out else fields("operator staff", out)


def _set_enabled(email: str, enabled: bool, json_out: bool) -> None:
    from keyplane.core.accounts import AccountKind

    with opened() as kp:
        found = kp.accounts.set_enabled(SYSTEM, AccountKind.OPERATOR, email, enabled)
    out = account_out(found)
    emit_json(out) if json_out else fields("operator staff", out)


@operators_app.command("disable")
@handled
def disable(email: Annotated[str, typer.Option(help="Sign-in email")],
            json_out: JsonOpt = False) -> None:
    """Disable an operator staff account: its sessions end at once."""
    _set_enabled(email, False, json_out)


@operators_app.command("enable")
@handled
def enable(email: Annotated[str, typer.Option(help="Sign-in email")],
           json_out: JsonOpt = False) -> None:
    """Enable a disabled operator staff account again."""
    _set_enabled(email, True, json_out)


@operators_app.command("list")
@handled
def list_staff(json_out: JsonOpt = False) -> None:
    """Operator staff accounts, newest first."""
    from keyplane.core.accounts import AccountKind

    with opened() as kp:
        page = kp.accounts.list(SYSTEM, AccountKind.OPERATOR, limit=500)
    items = [account_out(a) for a in page.items]
    if json_out:
        emit_json({"items": items, "next_cursor": page.next_cursor})
    else:
        table("operator staff", ["id", "email", "name", "enabled", "created"],
              [(a["id"], a["email"], a["name"], a["enabled"], a["created_at"]) for a in items])


@partners_app.command("invite")
@handled
def invite(email: Annotated[str, typer.Option(help="The developer's email")],
           json_out: JsonOpt = False) -> None:
    """A sign-up link for one partner developer (KEYPLANE_PARTNER_SIGNUP=invite or open);
    mailed when KEYPLANE_SMTP_URL is set, and printed here either way."""

    with opened() as kp:
        made = kp.accounts.invite(SYSTEM, email)
        issuer = kp.issuer
    link = f"{issuer}/partners/signup?invitation={made.token}"
    out = {"email": made.email, "link": link,
           "expires_at": made.expires_at.isoformat().replace("+00:00", "Z"),
           "mailed": made.mailed}
    if json_out:
        emit_json(out)
        return
    fields("partner invitation", {k: v for k, v in out.items() if k != "link"})
    console.print(link, soft_wrap=True, highlight=False)
