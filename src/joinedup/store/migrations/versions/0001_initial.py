"""Initial store: resources, versions, search index tables, users, tokens, audit, export jobs.

Revision ID: 0001
Revises:
"""
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Tables of revision 0001. Later revisions change the schema with explicit operations.
TABLES = ["resource", "resource_version", "idx_token", "idx_string", "idx_date", "idx_reference",
          "idx_quantity", "idx_uri", "app_user", "api_token", "audit_event", "export_job"]


def upgrade() -> None:
    create_tables(op.get_bind(), TABLES)


def downgrade() -> None:
    drop_tables(op.get_bind(), TABLES)
