"""``keyplane export`` and ``keyplane restore``: the CLI side of services/backup.py."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from keyplane.cli.main import JsonOpt, app, handled, opened
from keyplane.cli.output import emit_json, table


@app.command("export")
@handled
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSON-lines file to write")],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (and what it uses)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Back up every record (or one tenant's) as JSON lines: digests and hashes, never secrets.

    The file is private (0600) and appears only once complete."""
    from keyplane.files import private_file

    output = output.resolve()
    partial = output.with_name(f".{output.name}.partial")
    partial.unlink(missing_ok=True)
    private_file(partial)
    try:
        with opened() as kp, partial.open("w", encoding="utf-8") as out:
            report = kp.backup.export(out, tenant_id=tenant, revision=kp.schema_revision())
            out.flush()
            os.fsync(out.fileno())
        partial.replace(output)
    finally:  # an export that failed leaves no partial file
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    _show(report.as_dict(), json_out, f"exported to {output}")


@app.command("restore")
@handled
def restore(
    file: Annotated[Path, typer.Argument(help="A file written by `keyplane export`")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything, write nothing")]
    = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore a backup in one transaction, into a database without these records."""
    if not file.is_file():
        raise ValueError(f"no file {file}")
    with opened() as kp, file.open(encoding="utf-8") as lines:
        report = kp.backup.restore(lines, dry_run=dry_run)
    _show(report.as_dict(), json_out,
          "dry run: the restore would succeed (nothing written)" if dry_run else "restored")


def _show(report: dict[str, object], json_out: bool, title: str) -> None:
    if json_out:
        emit_json(report)
        return
    counts = report["counts"]
    kept = report["kept"]
    assert isinstance(counts, dict) and isinstance(kept, dict)
    table(title, ["section", "rows", "kept (already there)"],
          [(k, n, kept.get(k, 0)) for k, n in counts.items()])
