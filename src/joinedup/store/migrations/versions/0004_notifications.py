"""Care notifications: in-app inbox items and per-user notification preferences.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

from joinedup.store.schema import metadata

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ["inbox_item", "notification_preference"]


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, tables=[metadata.tables[t] for t in TABLES])


def downgrade() -> None:
    bind = op.get_bind()
    metadata.drop_all(bind, tables=[metadata.tables[t] for t in reversed(TABLES)])
