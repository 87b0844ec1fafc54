"""``keyplane bench``: run the benchmarks in ``bench/`` and print one table of ratios.

Each benchmark runs in its own process (``python bench/<name>.py --json``) and reports ratios
against a baseline it measures in the same run; nothing here compares absolute numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from keyplane.cli.main import JsonOpt, app
from keyplane.cli.output import console, emit_json, err_console, fail

QUICK = ["inprocess", "middleware", "verify_http", "djrf_compare", "metrics_cost"]
FULL = [*QUICK, "million"]
NEEDS_DJANGO = {"djrf_compare", "verify_http"}  # the bench extra: Django, granian, gunicorn


def bench_dir() -> Path:
    """``bench/`` of the source checkout (next to ``src/``), or of the working directory."""
    for candidate in (Path(__file__).resolve().parents[3] / "bench", Path.cwd() / "bench"):
        if (candidate / "_common.py").exists():
            return candidate
    fail("the benchmarks live in the source checkout's bench/ directory; run from there")


def _have_django() -> bool:
    from importlib.util import find_spec

    return all(find_spec(m) is not None
               for m in ("rest_framework_api_key", "granian", "gunicorn"))


def _run(directory: Path, name: str, quick: bool, tool: str) -> dict[str, Any]:
    cmd = [sys.executable, str(directory / f"{name}.py"), "--json"]
    if quick:
        cmd.append("--quick")
    if name not in ("inprocess", "million", "metrics_cost"):
        cmd += ["--tool", tool]
    done = subprocess.run(cmd, capture_output=True, text=True,  # noqa: S603 (our own scripts)
                          cwd=directory.parent, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"bench": name, "error": " | ".join(tail) or f"exit {done.returncode}",
                "results": []}
    out: dict[str, Any] = json.loads(lines[-1])
    return out


@app.command("bench")
def bench(
    full: Annotated[bool, typer.Option(
        "--full", help="Longer runs, plus one million keys in PostgreSQL")] = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help=f"Run only this bench (repeat): {', '.join(FULL)}")] = None,
    tool: Annotated[str, typer.Option(
        help="HTTP load generator: auto (wrk if installed), wrk or python")] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Run the benchmarks and print their ratios (measured against in-run baselines)."""
    directory = bench_dir()
    names = list(only) if only else list(FULL if full else QUICK)
    unknown = [n for n in names if n not in FULL]
    if unknown:
        fail(f"unknown bench: {', '.join(unknown)} (choose from {', '.join(FULL)})", code=2)
    skipped = [n for n in names if n in NEEDS_DJANGO and not _have_django()]
    names = [n for n in names if n not in skipped]
    outcomes: list[dict[str, Any]] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("benchmarks", total=len(names))
        for name in names:
            progress.update(task, description=f"bench/{name}.py")
            outcomes.append(_run(directory, name, quick=not full, tool=tool))
            progress.advance(task)
    for name in skipped:
        outcomes.append({"bench": name, "results": [],
                         "error": "skipped: needs the bench extra (pip install -e '.[bench]')"})
    if json_out:
        emit_json(outcomes)
    else:
        _table(outcomes)
    if any(o.get("error") and not str(o["error"]).startswith("skipped") for o in outcomes):
        raise typer.Exit(1)


def _table(outcomes: list[dict[str, Any]]) -> None:
    t = Table(title="Keyplane benchmarks (ratios against baselines measured in the same run)")
    for column in ("bench", "metric", "ratio", "spread", "target", ""):
        t.add_column(column)
    for outcome in outcomes:
        if outcome.get("error"):
            t.add_row(outcome["bench"], f"[red]{outcome['error']}[/]", "", "", "", "")
        for row in outcome["results"]:
            spread = f"{row['min']:.2f}-{row['max']:.2f}" if "min" in row else ""
            mark = {True: "[green]ok[/]", False: "[red]missed[/]"}.get(row.get("ok"), "")
            t.add_row(outcome["bench"], row["metric"], f"{row['ratio']:.2f}", spread,
                      str(row["target"]), mark)
    console.print(t)
    details = [f"{o['bench']}: {r['detail']}" for o in outcomes for r in o["results"]
               if r.get("detail")]
    for line in details:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
