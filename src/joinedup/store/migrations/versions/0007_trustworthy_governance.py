"""Trustworthy governance: vouched NHS numbers, confirmed links, the privacy review queue, sign-in throttling, and
each record version's own person.

Revision ID: 0007
Revises: 0006

Existing data: every NHS number already stored is treated as vouched for (links that existed under the earlier
rule keep working); a privacy officer can review them with `joinedup links list`. Versions written before this
revision take the person of the current version.
"""
import sqlalchemy as sa
from alembic import op

from joinedup.store.schema import create_tables, drop_tables

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ["verified_identifier", "patient_link", "privacy_review", "auth_throttle"]
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def upgrade() -> None:
    bind = op.get_bind()
    create_tables(bind, TABLES)
    if "patient_id" not in {c["name"] for c in sa.inspect(bind).get_columns("resource_version")}:
        op.add_column("resource_version", sa.Column("patient_id", sa.String(64)))  # 0001 made it from today's table
    bind.execute(sa.text(
        "UPDATE resource_version SET patient_id = (SELECT r.patient_id FROM resource r "
        "WHERE r.res_type = resource_version.res_type AND r.id = resource_version.id) WHERE patient_id IS NULL"))
    bind.execute(sa.text(
        "INSERT INTO verified_identifier (patient_id, system, value, verified_by, verified_at) "
        "SELECT DISTINCT res_id, system, code, 'migration 0007', '2026-12-04T00:00:00' FROM idx_token "
        "WHERE res_type = 'Patient' AND param = 'identifier' AND system = :nhs"), {"nhs": NHS})


def downgrade() -> None:
    with op.batch_alter_table("resource_version") as batch:
        batch.drop_column("patient_id")
    drop_tables(op.get_bind(), TABLES)
