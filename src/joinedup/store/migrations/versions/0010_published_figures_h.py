"""Published population figures precomputed for the dashboards (helper H: issue 18 parts 5-7).

Revision ID: 0010
Revises: 0009
"""
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ["published_figures"]


def upgrade() -> None:
    create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
