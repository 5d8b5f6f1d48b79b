"""Initial store: resources, versions, search index tables, users, tokens, audit, export jobs.

Revision ID: 0001
Revises:
"""
from alembic import op

from joinedup.store.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Tables of revision 0001. Later revisions change the schema with explicit operations.
TABLES = ["resource", "resource_version", "idx_token", "idx_string", "idx_date", "idx_reference",
          "idx_quantity", "idx_uri", "app_user", "api_token", "audit_event", "export_job"]


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, tables=[metadata.tables[t] for t in TABLES])


def downgrade() -> None:
    bind = op.get_bind()
    metadata.drop_all(bind, tables=[metadata.tables[t] for t in reversed(TABLES)])
