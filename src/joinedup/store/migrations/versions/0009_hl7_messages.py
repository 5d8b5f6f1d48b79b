"""HL7 v2 ADT feed: messages applied (one per sending facility and control id) and the dead-letter store.

Revision ID: 0009
Revises: 0008
"""
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ["hl7_message", "hl7_dead_letter"]


def upgrade() -> None:
    create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
