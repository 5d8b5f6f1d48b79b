"""Information governance: care relationships, patient choices, restricted items, break-glass, epoch.

Revision ID: 0003
Revises: 0001
"""
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ["care_relationship", "patient_choice", "restricted_item", "break_glass", "governance_epoch"]


def upgrade() -> None:
    create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
