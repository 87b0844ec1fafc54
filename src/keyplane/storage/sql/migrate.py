"""Schema migrations with Alembic, driven from code (``keyplane db upgrade``, start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

_HERE = Path(__file__).parent


def _config() -> Config:
    return Config(str(_HERE / "alembic.ini"))


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Apply migrations. On SQLite, foreign keys are off while they run: batch mode rebuilds a
    table by dropping it, and with foreign keys on that drop would cascade into every table that
    references it. The references are checked before foreign keys come back on."""
    cfg = _config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(conn, on=False)
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            if sqlite:  # before the commit where possible (Alembic leaves SQLite's open)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"migration left broken references: {broken[:5]}")
            if conn.in_transaction():
                conn.commit()
        finally:
            if sqlite:
                if conn.in_transaction():
                    conn.rollback()
                _sqlite_foreign_keys(conn, on=True)


def _sqlite_foreign_keys(conn: Connection, *, on: bool) -> None:
    # outside any transaction (SQLite ignores this pragma inside one), on the driver connection
    driver = conn.connection.driver_connection
    if driver is None:  # only an invalidated connection has none
        raise RuntimeError("the SQLite connection is closed")
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def current(engine: Engine) -> str | None:
    """The applied revision(s), joined like :func:`head` (several branches may be applied)."""
    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def head() -> str | None:
    heads = ScriptDirectory.from_config(_config()).get_heads()
    return ",".join(sorted(heads)) or None


def revision(engine: Engine, message: str) -> None:
    """Developers: autogenerate a migration from the table definitions."""
    cfg = _config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
