"""Schema migrations with Alembic, driven from code (``keyplane db upgrade``, start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

_HERE = Path(__file__).parent


def _config() -> Config:
    return Config(str(_HERE / "alembic.ini"))


def upgrade(engine: Engine, revision: str = "heads") -> None:
    cfg = _config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if conn.in_transaction():
            conn.commit()


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
