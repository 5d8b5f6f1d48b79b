"""The bulk-import line each current entry was loaded from, by hash (helper I: issue 14 part 2, re-import speed).

`resource.line_hash` is the hash of the NDJSON line (with the import's source and the fingerprint version) a bulk
import wrote the current version from; every other write leaves it empty. A re-import finds a line whose hash is
stored on a live entry unchanged without parsing it.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "line_hash" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("resource")}:
        op.add_column("resource", sa.Column("line_hash", sa.String(40)))  # 0001 made it from today's table


def downgrade() -> None:
    with op.batch_alter_table("resource") as batch:
        batch.drop_column("line_hash")
