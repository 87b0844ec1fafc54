"""Output for people (Rich tables) and scripts (``--json``), and one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    # cells are Text, never markup: a key named "[/]" must print, not crash the table
    cells = [[Text("" if v is None else str(v)) for v in r] for r in rows]
    t = Table(title=title)
    for i, c in enumerate(columns):
        if c == "id":  # never cut an id: people copy it into the next command
            t.add_column(c, no_wrap=True, min_width=max((len(r[i]) for r in cells), default=2))
        else:
            t.add_column(c)
    for row in cells:
        t.add_row(*row)
    console.print(t)


def fields(title: str, data: dict[str, Any]) -> None:
    t = Table(title=title, show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for k, v in data.items():
        if k == "key":
            continue
        shown = json.dumps(v) if isinstance(v, list | dict) else ("" if v is None else str(v))
        t.add_row(k, Text(shown))
    console.print(t)


def secret_notice(secret: str) -> None:
    console.print("\n[bold yellow]Copy this key now; it will not be shown again:[/]")
    console.print(secret, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    # one line whatever the terminal width; the message is text, never markup
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
