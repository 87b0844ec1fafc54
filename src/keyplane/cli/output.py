"""Output for people (Rich tables) and scripts (``--json``), and one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    console.print(t)


def fields(title: str, data: dict[str, Any]) -> None:
    t = Table(title=title, show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for k, v in data.items():
        if k == "key":
            continue
        shown = json.dumps(v) if isinstance(v, list | dict) else ("" if v is None else str(v))
        t.add_row(k, shown)
    console.print(t)


def secret_notice(secret: str) -> None:
    console.print("\n[bold yellow]Copy this key now; it will not be shown again:[/]")
    console.print(secret, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)
