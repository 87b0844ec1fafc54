"""A lost database as storage code reports it: :func:`unreachable` tells a lost or refused
connection from a failed statement, and :func:`outage_as_unavailable` turns the first into
:class:`~keyplane.core.errors.Unavailable` (503 ``database_unavailable``), never the driver's
error (which may name the host). Imports nothing of storage, so every storage module may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from keyplane.core.errors import Unavailable

# SQLSTATE classes of a lost or refused connection (a connection that never opened has none)
_DISCONNECT_STATES = ("08", "57P01", "57P02", "57P03")
UNAVAILABLE = "the database is unreachable; try again shortly"


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (not that a statement failed)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if orig is None or type(orig).__module__.startswith("sqlite3"):
        return False  # SQLite: a locked or unwritable file is not an outage
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    state = getattr(orig, "sqlstate", None)
    return state is None or state.startswith(_DISCONNECT_STATES)


@contextmanager
def outage_as_unavailable() -> Iterator[None]:
    """For storage code outside a unit of work: a lost database becomes ``Unavailable``."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if unreachable(exc):
            raise Unavailable(UNAVAILABLE, code="database_unavailable") from None
        raise
