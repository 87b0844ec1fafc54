"""Every storage module imports on its own, first thing in a fresh interpreter: an import
cycle between storage modules (engine → audit → tables → usage → engine) must not depend on
which module some other code happened to import first."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import keyplane.storage.sql as storage


def test_each_storage_module_imports_first_in_a_fresh_interpreter() -> None:
    names = [m.name for m in pkgutil.iter_modules(storage.__path__, "keyplane.storage.sql.")
             if m.name.rsplit(".", 1)[1] != "migrations"]
    assert len(names) > 10
    script = "import importlib, sys\nname = sys.argv[1]\nimportlib.import_module(name)\n"
    failed = {}
    for name in names:
        done = subprocess.run([sys.executable, "-c", script, name], capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            failed[name] = done.stderr.strip().splitlines()[-1]
    assert not failed, failed
