"""Care relationships may name a PractitionerRole (matched through its practitioner and organisation).

Revision ID: 0005
Revises: 0004

Revision 0003 creates `care_relationship` from the current table definition, so a new database already has the
column and index; an existing one gets them here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "care_relationship"
COLUMN = "practitioner_role_id"
INDEX = "ix_care_relationship_role"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if COLUMN not in {c["name"] for c in inspector.get_columns(TABLE)}:
        op.add_column(TABLE, sa.Column(COLUMN, sa.String(64)))
    if INDEX not in {i["name"] for i in inspector.get_indexes(TABLE)}:
        op.create_index(INDEX, TABLE, [COLUMN, "patient_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column(COLUMN)
