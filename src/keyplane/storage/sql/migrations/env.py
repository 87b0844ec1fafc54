"""Alembic environment: runs on the connection Keyplane hands it (see ``migrate.py``)."""

from __future__ import annotations

from alembic import context

from keyplane.storage.sql.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - Keyplane always passes a connection
    raise RuntimeError("run migrations with `keyplane db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
