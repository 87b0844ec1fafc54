"""The directories and files Keyplane creates hold secrets (peppers, key digests): they are
private to the server's user. What the operator created is left as they made it.

* every directory Keyplane creates (the data directory, a missing parent of the SQLite file):
  0700;
* ``peppers.json`` and the SQLite database: 0600, set when the file is created, before anything
  is written to it. SQLite gives ``-wal`` and ``-shm`` the database file's mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

log = logging.getLogger("keyplane.files")


def private_dir(path: Path) -> None:
    """Creates ``path`` and its missing parents, each 0700 (whatever the umask). An existing
    directory keeps its mode: the operator chose it."""
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:
            continue  # another worker made it: it made it the same way
        os.chmod(directory, PRIVATE_DIR)  # the umask may have taken bits away, never added


def private_file(path: Path) -> bool:
    """Creates ``path`` empty with mode 0600 if it does not exist (its directory as
    :func:`private_dir`); returns whether it did. An existing file keeps its mode, with a
    warning when other users may read it."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        warn_if_readable(path)
        return False
    os.close(fd)
    os.chmod(path, PRIVATE_FILE)
    return True


def warn_if_readable(path: Path) -> None:
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s can be read by other users (mode %04o): chmod 600 it", path, mode)
