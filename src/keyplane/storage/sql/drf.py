"""Reading djangorestframework-api-key's table (``rest_framework_api_key_apikey``) from the
database of the project being migrated (SQLite or PostgreSQL), read-only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

TABLE = "rest_framework_api_key_apikey"
COLUMNS = ("id", "prefix", "hashed_key", "name", "created", "expiry_date", "revoked")


def _engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith(("sqlite:", "postgresql+psycopg://")):
        raise ValueError("--from-database: a sqlite:/// or postgresql:// URL")
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _table(conn: sa.Connection) -> sa.Table:
    found = sa.Table(TABLE, sa.MetaData(), autoload_with=conn)
    missing = [c for c in COLUMNS if c not in found.c]
    if missing:
        raise ValueError(f"--from-database: {TABLE} has no column {missing[0]!r} (is this "
                         "djangorestframework-api-key 1.4 or later?)")
    return found


def count_drf(url: str) -> int:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                raise ValueError(f"--from-database: the database has no table {TABLE}")
            return int(conn.execute(sa.select(sa.func.count()).select_from(
                _table(conn))).scalar_one())
    finally:
        engine.dispose()


def read_drf(url: str, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every row of the table, oldest first, in the order of its primary key."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                raise ValueError(f"--from-database: the database has no table {TABLE}")
            table = _table(conn)
            q = sa.select(*(table.c[c] for c in COLUMNS)).order_by(table.c.created, table.c.id)
            result = conn.execution_options(yield_per=batch).execute(q)
            for row in result.mappings():
                yield dict(row)
    finally:
        engine.dispose()
