"""Who the command line acts as: the operator at this machine, recorded in the audit log as
``cli:<login name>`` acting through the ``cli`` credential (the database access itself)."""

from __future__ import annotations

import getpass
from dataclasses import replace

from keyplane.core.rights import SYSTEM, Caller


def cli_caller() -> Caller:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        login = ""
    name = f"cli:{login[:60]}" if login else "cli"
    return replace(SYSTEM, name=name, via="cli")


CLI = cli_caller()
