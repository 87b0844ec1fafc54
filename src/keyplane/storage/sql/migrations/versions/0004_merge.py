"""merge the usage and OAuth branches into one line of history

Revision ID: 0004_merge
Revises: 0002_usage, 0003_oauth
"""

from __future__ import annotations

revision = "0004_merge"
down_revision = ("0002_usage", "0003_oauth")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
