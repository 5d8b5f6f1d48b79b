"""Per-user alert threshold for decision support (lowest severity of conflict alert shown).

Revision ID: 0006
Revises: 0005
"""
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ["alert_preference"]


def upgrade() -> None:
    create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
