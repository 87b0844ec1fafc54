"""SQLAlchemy 2 storage: tables, repositories, unit of work, Alembic migrations."""
