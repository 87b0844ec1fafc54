"""``keyplane apps list|show|approve|reject|suspend|rotate-secret``: the operator's decisions on
partner apps. Approval prints the client secret once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keyplane.cli.actor import CLI
from keyplane.cli.main import JsonOpt, app, handled, opened
from keyplane.cli.output import console, emit_json, fields, table
from keyplane.core.views import app_out

apps_app = typer.Typer(help="Partner apps (OAuth clients): approve, reject, suspend.",
                       no_args_is_help=True)
app.add_typer(apps_app, name="apps")

StatusOpt = Annotated[str | None, typer.Option(
    "--status", help="pending, approved, rejected or suspended")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit log)")]


def _out(found: Any, secret: str | None = None) -> dict[str, Any]:
    return app_out(found, secret)


def _show(out: dict[str, Any], json_out: bool, title: str) -> None:
    if json_out:
        emit_json(out)
        return
    fields(title, {k: v for k, v in out.items() if k != "client_secret"})
    if out.get("client_secret"):
        console.print("\n[bold yellow]Copy the client secret now; it will not be shown "
                      "again:[/]")
        console.print(out["client_secret"], soft_wrap=True, highlight=False)


@apps_app.command("list")
@handled
def list_apps(status: StatusOpt = None, limit: int = 200, json_out: JsonOpt = False) -> None:
    """List partner apps, newest first (pending ones wait for your decision)."""

    with opened() as kp:
        page = kp.apps.list(CLI, None, status=status, limit=limit)
    items = [_out(a) for a in page.items]
    if json_out:
        emit_json({"items": items, "next_cursor": page.next_cursor})
    else:
        table("apps", ["id", "name", "status", "client_id", "registered"],
              [(a["id"], a["name"], a["status"], a["client_id"], a["created_at"])
               for a in items])


@apps_app.command("show")
@handled
def show(app_id: str, json_out: JsonOpt = False) -> None:
    """Show one partner app."""

    with opened() as kp:
        out = _out(kp.apps.get(CLI, None, app_id))
    _show(out, json_out, "app")


def _decide(app_id: str, action: str, reason: str | None, json_out: bool) -> None:

    with opened() as kp:
        found, secret = kp.apps.decide(CLI, app_id, action, reason)
    _show(_out(found, secret), json_out, f"app {found.status.value}")


@apps_app.command("approve")
@handled
def approve(app_id: str, reason: ReasonOpt = None, json_out: JsonOpt = False) -> None:
    """Approve an app: issues its client_id and client secret (printed once)."""
    _decide(app_id, "approve", reason, json_out)


@apps_app.command("reject")
@handled
def reject(app_id: str, reason: ReasonOpt = None, json_out: JsonOpt = False) -> None:
    """Reject a pending app."""
    _decide(app_id, "reject", reason, json_out)


@apps_app.command("suspend")
@handled
def suspend(app_id: str, reason: ReasonOpt = None, json_out: JsonOpt = False) -> None:
    """Suspend an approved app: its flows and tokens stop until it is approved again."""
    _decide(app_id, "suspend", reason, json_out)


@apps_app.command("rotate-secret")
@handled
def rotate_secret(app_id: str, grace_period_seconds: Annotated[int, typer.Option(
        help="How long the old secret keeps working (0 = it dies now)")] = 604800,
        json_out: JsonOpt = False) -> None:
    """Issue a new client secret (printed once); the old one works until the grace ends."""

    with opened() as kp:
        issued = kp.apps.rotate_secret(
            CLI, None, app_id, {"grace_period_seconds": grace_period_seconds})
    _show(_out(issued.app, issued.secret), json_out, "client secret rotated")
