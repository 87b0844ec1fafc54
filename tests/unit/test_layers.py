"""The import contracts in .importlinter (`make lint` runs them): they hold on the code, and each
one catches the import it forbids."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# one forbidden import per contract: (module, the line added to it, the contract that breaks)
VIOLATIONS = [
    ("core/ids.py", "import keyplane.services.context", "core imports nothing of Keyplane"),
    ("services/keys.py", "import keyplane.cache.local", "services import only core"),
    ("storage/sql/usage.py", "import keyplane.services.usage",
     "storage imports only core (and keyplane.files)"),
    ("cache/local.py", "import keyplane.storage.sql.tables", "cache imports only core"),
    ("web/routes_keys.py", "import keyplane.cache.local",
     "only keyplane.bootstrap imports storage and cache"),
    ("cli/audit.py", "import keyplane.web.errors", "the CLI does not import web"),
    ("sdk/_cache.py", "import keyplane.core.scopes", "the SDK imports no other Keyplane package"),
    ("config.py", "import keyplane.bootstrap", "Layers, outermost first"),
]


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """Runs the contracts over the ``keyplane`` package found in ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "300", "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / ".importlinter")],
        cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_each_contract_catches_what_it_forbids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "keyplane", src / "keyplane",
                    ignore=shutil.ignore_patterns("__pycache__", "admin"))
    for module, line, _ in VIOLATIONS:
        target = src / "keyplane" / module
        target.write_text(target.read_text() + f"\n{line}\n")
    # a new top-level module must be given a place in the layers
    (src / "keyplane" / "unplaced.py").write_text('"""Not in any layer."""\n')
    result = lint_imports(src)
    assert result.returncode == 1, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")
              or " BROKEN (" in line]
    for _, line, contract in VIOLATIONS:
        assert any(b.startswith(contract) for b in broken), (contract, result.stdout)
        assert line.split()[1] in result.stdout  # the report names the forbidden module
    assert "keyplane.unplaced" in result.stdout
    assert f"Contracts: 0 kept, {len(VIOLATIONS)} broken." in result.stdout
