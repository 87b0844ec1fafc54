"""Migration 0003_oauth creates exactly the connected-app tables the code declares, on SQLite
and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from keyplane.bootstrap import Keyplane
from keyplane.storage.sql import oauth_tables
from keyplane.storage.sql.tables import metadata

MINE = {t.name for t in (oauth_tables.oauth_apps, oauth_tables.oauth_client_secrets,
                         oauth_tables.oauth_connections, oauth_tables.oauth_codes,
                         oauth_tables.oauth_tokens, oauth_tables.web_sessions)}


def _concerns_mine(diff: object) -> bool:
    return any(name in repr(diff) for name in MINE)


def test_migration_matches_the_table_definitions(keyplane: Keyplane) -> None:
    with keyplane.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = [d for d in compare_metadata(context, metadata) if _concerns_mine(d)]
        present = set(conn.dialect.get_table_names(conn))
    assert present >= MINE
    assert diffs == []
