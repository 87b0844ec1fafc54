"""``keyplane import``: existing keys into a tenant (services/imports.py does the deciding)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from keyplane.cli.main import JsonOpt, TenantOpt, app, handled, opened
from keyplane.cli.output import console, emit_json, table

import_app = typer.Typer(help="Bring existing keys in, so that the integrations built on them "
                              "keep working.", no_args_is_help=True)
app.add_typer(import_app, name="import")

DryRun = Annotated[bool, typer.Option("--dry-run", help="Decide every row, write nothing")]
ScopeMapOpt = Annotated[Path | None, typer.Option(
    "--scope-map", help="TOML or JSON: default, [names], [prefixes], [rename] → scopes")]
OwnerOpt = Annotated[str | None, typer.Option(
    "--owner", help="Email or id of the member or service account owning keys whose row "
                    "names no owner")]


def _scope_map(path: Path | None) -> Any:
    from keyplane.services.imports import ScopeMap

    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"--scope-map: no file {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--scope-map: not valid {'JSON' if path.suffix == '.json' else 'TOML'}"
                         f" ({type(exc).__name__})") from None
    return ScopeMap.parse(data)


def _run(source: str, tenant: str, rows: Callable[[], Iterable[Any]], total: int | None,
         scope_map: Any, owner: str | None, dry_run: bool, json_out: bool) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("[bold]importing[/]"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=json_out,
                        disable=json_out)
    with opened() as kp, progress:
        task = progress.add_task("import", total=total)
        report = kp.imports.run(source, tenant, rows(), scope_map=scope_map, owner=owner,
                                dry_run=dry_run, progress=lambda n: progress.advance(task, n))
    out = report.as_dict()
    if json_out:
        emit_json(out)
        if out["refused"]:
            raise typer.Exit(2)
        return
    verb = "would import" if dry_run else "imported"
    n_imported = out["would_import"] if dry_run else out["imported"]
    console.print(f"{verb} {n_imported}, already present {out['present']}, "
                  f"refused {out['refused']}" + (" (dry run: nothing written)" if dry_run
                                                 else ""))
    shown = [r for r in out["rows"] if r["status"] in ("refused", "present")]
    if shown:
        table("rows not imported", ["row", "name", "status", "reason"],
              [(r["row"], r["name"], r["status"].replace("_", " "), r["reason"])
               for r in shown[:1000]])
        if len(shown) > 1000:
            console.print(f"… and {len(shown) - 1000} more (use --json for every row)")
    if out["refused"]:
        raise typer.Exit(2)


@import_app.command("drf-api-key")
@handled
def drf(
    tenant: TenantOpt,
    from_database: Annotated[str, typer.Option(
        "--from-database", help="The Django project's database: sqlite:///path or "
                                "postgresql://…")],
    scope_map: ScopeMapOpt = None,
    owner: OwnerOpt = None,
    dry_run: DryRun = False,
    json_out: JsonOpt = False,
) -> None:
    """djangorestframework-api-key's keys (prefix.secret): their digests are kept and
    upgraded to Keyplane's on each key's first use."""
    from keyplane.bootstrap import count_drf, read_drf
    from keyplane.services.import_sources import drf_rows

    total = count_drf(from_database)
    _run("drf-api-key", tenant, lambda: drf_rows(read_drf(from_database)), total,
         _scope_map(scope_map), owner, dry_run, json_out)


@import_app.command("csv")
@handled
def csv_file(
    file: Annotated[Path, typer.Argument(help="CSV with a header: name,key,scopes,expires_at,…")],
    tenant: TenantOpt,
    scope_map: ScopeMapOpt = None,
    owner: OwnerOpt = None,
    dry_run: DryRun = False,
    json_out: JsonOpt = False,
) -> None:
    """Plaintext keys and their settings: hashed on import; no plaintext is kept (delete the
    file afterwards)."""
    from keyplane.services.import_sources import count_rows, csv_rows

    if not file.is_file():
        raise ValueError(f"no file {file}")
    with file.open(encoding="utf-8-sig", newline="") as lines:
        total = count_rows(lines)
    handle = file.open(encoding="utf-8-sig", newline="")
    try:
        _run("csv", tenant, lambda: csv_rows(handle), total, _scope_map(scope_map), owner,
             dry_run, json_out)
    finally:
        handle.close()


@import_app.command("keyplane")
@handled
def keyplane_file(
    file: Annotated[Path, typer.Argument(help="A file written by another Keyplane's "
                                              "`keyplane export`")],
    tenant: TenantOpt,
    scope_map: ScopeMapOpt = None,
    owner: OwnerOpt = None,
    dry_run: DryRun = False,
    json_out: JsonOpt = False,
) -> None:
    """Another Keyplane's keys (digests only: they verify here when this server has the
    source's pepper). Owners are matched by email; --owner for the others."""
    from keyplane.services.import_sources import keyplane_rows

    if not file.is_file():
        raise ValueError(f"no file {file}")
    with file.open(encoding="utf-8") as lines:
        rows = keyplane_rows(lines)
    _run("keyplane", tenant, lambda: rows, len(rows), _scope_map(scope_map), owner, dry_run,
         json_out)
