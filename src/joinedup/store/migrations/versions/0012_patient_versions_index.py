"""A covering index for reading one person's record: the person's entries with their versions, from the index alone.

The summary, `$everything` and the person page first read which versions of a person's entries are current (the
shared parse cache holds the rest): `patient_id, deleted` → `res_type, id, version, last_updated, source,
content_hash`. With only `ix_resource_patient (patient_id)`, each of a lifetime record's thousands of entries cost a
visit to its row (among pages of JSON); `ix_resource_patient_versions` answers from the index. It starts with
`patient_id`, so it serves every lookup the old index served, which it replaces (the same number of indexes to
maintain on writes).

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NEW, OLD = "ix_resource_patient_versions", "ix_resource_patient"
COLUMNS = ["patient_id", "deleted", "res_type", "id", "version", "last_updated", "source", "content_hash"]


def _indexes() -> set[str]:
    return {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("resource")}


def upgrade() -> None:
    present = _indexes()  # 0001 makes today's tables, with this index already
    if NEW not in present:
        op.create_index(NEW, "resource", COLUMNS)
    if OLD in present:
        op.drop_index(OLD, table_name="resource")


def downgrade() -> None:
    present = _indexes()
    if OLD not in present:
        op.create_index(OLD, "resource", ["patient_id"])
    if NEW in present:
        op.drop_index(NEW, table_name="resource")
