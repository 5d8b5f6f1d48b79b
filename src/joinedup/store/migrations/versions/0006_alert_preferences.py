"""Per-user alert threshold for decision support (lowest severity of conflict alert shown).

Revision ID: 0006
Revises: 0005
"""
from alembic import op

from joinedup.store.schema import metadata

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ["alert_preference"]


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, tables=[metadata.tables[t] for t in TABLES])


def downgrade() -> None:
    bind = op.get_bind()
    metadata.drop_all(bind, tables=[metadata.tables[t] for t in reversed(TABLES)])
