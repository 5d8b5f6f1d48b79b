"""Information governance: care relationships, patient choices, restricted items, break-glass, epoch.

Revision ID: 0003
Revises: 0001
"""
from alembic import op

from joinedup.store.schema import metadata

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ["care_relationship", "patient_choice", "restricted_item", "break_glass", "governance_epoch"]


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, tables=[metadata.tables[t] for t in TABLES])


def downgrade() -> None:
    bind = op.get_bind()
    metadata.drop_all(bind, tables=[metadata.tables[t] for t in reversed(TABLES)])
