"""Migration 0006_leaks_shares creates exactly what the code declares for leaks and share links,
on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from keyplane.bootstrap import Keyplane
from keyplane.storage.sql.tables import metadata

MINE = ("shares", "scanning_reports", "leaked_at", "leak_url", "leak_source",
        "leaked_key_action")


def test_migration_matches_the_table_definitions(keyplane: Keyplane) -> None:
    with keyplane.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = [d for d in compare_metadata(context, metadata)
                 if any(name in repr(d) for name in MINE)]
        present = set(conn.dialect.get_table_names(conn))
        key_columns = {c["name"] for c in conn.dialect.get_columns(conn, "api_keys")}
    assert present >= {"shares", "scanning_reports"}
    assert key_columns >= {"leaked_at", "leak_url", "leak_source"}
    assert diffs == []
