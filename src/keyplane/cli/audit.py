"""``keyplane audit verify | export | prune``: the audit log's hash chains checked, written out
as JSON lines, and trimmed to each tenant's retention (services/audit.py)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from keyplane.cli.main import JsonOpt, app, handled, opened
from keyplane.cli.output import console, emit_json, err_console
from keyplane.core.model import AuditEvent
from keyplane.core.views import ts

audit_app = typer.Typer(help="The audit log: verify its hash chains, export it, prune it.",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")

TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", help="One tenant's log (Location ID); default: every tenant's and the "
    "operator's")]


class Format(StrEnum):
    jsonl = "jsonl"


def entry_json(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "seq": e.seq, "at": ts(e.at), "tenant_id": e.tenant_id,
            "actor": e.actor, "credential": e.credential, "action": e.action,
            "target": e.target, "outcome": e.outcome, "ip": e.ip, "user_agent": e.user_agent,
            "request_id": e.request_id, "details": e.details, "changes": e.changes,
            "prev_hash": e.prev_hash, "hash": e.hash}


@audit_app.command("verify")
@handled
def verify(tenant: TenantOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute every entry's hash and link: an edited, removed or reordered entry is named
    (tenant, sequence number, entry id) and the command exits 1."""
    with opened() as kp:
        result = kp.audit.verify(tenant)
    if json_out:
        emit_json({"ok": result.ok,
                   "chains": [{"tenant_id": c.tenant_id, "entries": c.entries,
                               "head_seq": c.head_seq, "pruned_seq": c.pruned_seq}
                              for c in result.chains],
                   "breaks": [{"tenant_id": b.tenant_id, "seq": b.seq, "entry_id": b.entry_id,
                               "problem": b.problem} for b in result.breaks]})
    else:
        checked = sum(c.entries for c in result.chains)
        for b in result.breaks:
            err_console.print(f"[red]broken:[/] {b.describe()}", highlight=False,
                              soft_wrap=True, markup=True)
        if result.ok:
            console.print(f"The audit log verifies: {checked} entries in "
                          f"{len(result.chains)} chain(s).", highlight=False)
        else:
            err_console.print(f"The audit log does NOT verify: {len(result.breaks)} break(s) "
                              f"in {checked} entries.", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("export")
@handled
def export(
    tenant: TenantOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="jsonl: one entry per line")]
    = Format.jsonl,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file (default: standard output)")] = None,
) -> None:
    """Every entry still kept, chain by chain in sequence order, one JSON object per line
    (with its seq, prev_hash and hash, so the export can be checked on its own)."""
    count = 0
    with opened() as kp:
        if output is None:
            count = _write(kp.audit.export(tenant), sys.stdout)
        else:
            from keyplane.files import private_file

            output = output.resolve()
            partial = output.with_name(f".{output.name}.partial")
            private_file(partial)
            with partial.open("w", encoding="utf-8") as f:
                count = _write(kp.audit.export(tenant), f)
            partial.replace(output)
    if output is not None:
        console.print(f"Exported {count} audit entries to {output}", highlight=False)


def _write(entries: Any, out: TextIO) -> int:
    count = 0
    for e in entries:
        out.write(json.dumps(entry_json(e), ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    out.flush()
    return count


@audit_app.command("prune")
@handled
def prune(tenant: TenantOpt = None, json_out: JsonOpt = False) -> None:
    """Delete the entries older than each tenant's audit_retention_days (tenants without one
    keep everything). The chain keeps a checkpoint, so `keyplane audit verify` still checks
    the rest. The hygiene job does this too."""
    with opened() as kp:
        deleted = kp.audit.prune(tenant)
    if json_out:
        emit_json({"deleted": deleted})
    elif not deleted:
        console.print("Nothing to prune.")
    else:
        for tid, count in deleted.items():
            console.print(f"{tid}: {count} entries pruned", highlight=False)
