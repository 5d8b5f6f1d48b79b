"""Governance epoch steps: each change of care relationships only, kept with the epoch token it set, so that every
process follows another's change in its cached facts in place (governance.facts) instead of reloading them.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLES = ["governance_epoch_step"]


def upgrade() -> None:
    if "governance_epoch_step" not in sa.inspect(op.get_bind()).get_table_names():
        create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
