"""The speed benchmarks still run, in short versions: a bench broken by a change in the code it
measures is found here, not at the next ``make bench``.

No ratio is asserted (the machine is shared and noisy: the targets are read from ``make bench``);
what is checked is that each bench runs to its end against the real code, measures every row it
reports, and that the protected route answered every request of the load without an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_in_process_bench_times_the_server_and_sdk_hit_paths() -> None:
    out = run_bench("inprocess.py", "--quick")
    rows = {row["metric"]: row for row in out["results"]}
    assert len(rows) == 3, rows
    for row in rows.values():
        assert row["ratio"] > 1, row  # each path hashes and looks up, and does more
        assert row["min"] <= row["ratio"] <= row["max"], row


def test_the_middleware_bench_loads_both_routes_without_an_error() -> None:
    out = run_bench("middleware.py", "--quick", "--rounds", "1", "--duration", "1",
                    "--tool", "python")
    [row] = out["results"]
    assert row["ratio"] > 0, row
    assert "errors {'plain': 0, 'protected': 0}" in row["detail"], row
    assert "server CPU per request" in row["detail"], row
