"""``keyplane keys report`` (keys that need attention) and ``keyplane hygiene run`` (the
unused-key policy, for cron)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keyplane.cli.actor import CLI
from keyplane.cli.main import JsonOpt, app, handled, keys_app, opened
from keyplane.cli.output import console, emit_json, table
from keyplane.core import hygiene as hy
from keyplane.services.hygiene import PolicyRun, flagged_view

hygiene_app = typer.Typer(help="Key hygiene: the unused-key policy.", no_args_is_help=True)
app.add_typer(hygiene_app, name="hygiene")

ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Run even if an instance ran the policy within "
    "KEYPLANE_HYGIENE_INTERVAL_SECONDS (each key is still warned and revoked once)")]


def _run_out(run: PolicyRun | None) -> dict[str, Any]:
    if run is None:
        return {"ran": False, "warned": [], "revoked": []}
    return {"ran": True, "warned": run.warned, "revoked": run.revoked}


def _print_run(out: dict[str, Any]) -> None:
    if not out["ran"]:
        console.print("Another instance ran the unused-key policy within the interval "
                      "(--force to run it anyway).")
    else:
        console.print(f"Unused-key policy: {len(out['warned'])} warned, "
                      f"{len(out['revoked'])} revoked.")


@keys_app.command("report")
@handled
def report(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id (Location ID).")],
    unused_days: Annotated[int, typer.Option("--unused-days", min=1, max=hy.MAX_REPORT_DAYS,
                                             help="Unused for this many days")]
    = hy.DEFAULT_UNUSED_DAYS,
    expiring_days: Annotated[int, typer.Option("--expiring-days", min=1,
                                               max=hy.MAX_REPORT_DAYS,
                                               help="Expiring within this many days")]
    = hy.DEFAULT_EXPIRING_DAYS,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Only keys with this reason: " + ", ".join(hy.REASONS))] = None,
    apply_policy: Annotated[bool, typer.Option(
        "--apply-policy", help="First run the unused-key policy (revoke_unused_after_days) "
        "over every tenant that has it")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Keys that need attention (never used, unused, no expiry, expiring, expired, owner
    disabled, write scopes unused), each with its reasons; the same as GET /v1/reports/keys."""
    with opened() as kp:
        ran = _run_out(kp.hygiene.run(force=force)) if apply_policy else None
        items: list[dict[str, Any]] = []
        cursor = None
        thresholds = hy.Thresholds(unused_days, expiring_days)
        while True:
            page = kp.hygiene.report(CLI, tenant, thresholds=thresholds, reason=reason,
                                     limit=200, cursor=cursor)
            items.extend(flagged_view(i) for i in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
    if json_out:
        emit_json({"items": items, **({"policy": ran} if ran is not None else {})})
        return
    if ran is not None:
        _print_run(ran)
    table(f"keys that need attention ({len(items)})",
          ["id", "name", "last used", "expires", "reasons"],
          [(i["key"]["id"], i["key"]["name"], _day(i["key"]["last_used_at"]) or "never",
            _day(i["key"]["expires_at"]) or "never", "\n".join(i["reasons"]))
           for i in items])


def _day(stamp: str | None) -> str | None:
    return stamp[:10] if stamp else None


@hygiene_app.command("run")
@handled
def run(force: ForceOpt = False, json_out: JsonOpt = False) -> None:
    """Run the unused-key policy once (for cron): warn owners of keys close to
    revoke_unused_after_days, revoke those past it that were warned."""
    with opened() as kp:
        out = _run_out(kp.hygiene.run(force=force))
    emit_json(out) if json_out else _print_run(out)
