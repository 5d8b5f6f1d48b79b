"""Care notifications: in-app inbox items and per-user notification preferences.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ["inbox_item", "notification_preference"]


def upgrade() -> None:
    create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
