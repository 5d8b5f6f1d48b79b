"""Tables of the resource store: versioned JSON resources plus typed search-index tables."""

from __future__ import annotations

import orjson
import sqlalchemy as sa

metadata = sa.MetaData()


class JsonText(sa.types.TypeDecorator):
    """A JSON document held as text on PostgreSQL (revision 0013; it was JSONB): dicts in, dicts out, as `sa.JSON`.

    Nothing queries inside a stored document (search has its own index tables), so JSONB's binary form bought
    nothing and cost the server a parse of every document on every write - twice per write, the current row and the
    version row - which was most of a bulk import's database time. Text keeps the document exactly as written (key
    order included), and readers parse it with orjson. SQLite held JSON as text already."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else orjson.dumps(value).decode()

    def process_result_value(self, value, dialect):
        return None if value is None else orjson.loads(value)


JsonDoc = sa.JSON().with_variant(JsonText(), "postgresql")
Id = sa.String(64)
Type = sa.String(64)

# The current version of every resource (deleted ones kept as tombstones for 410 Gone).
resource = sa.Table(
    "resource", metadata,
    sa.Column("res_type", Type, primary_key=True),
    sa.Column("id", Id, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.String(40), nullable=False),
    sa.Column("source", sa.String(255)),
    sa.Column("patient_id", Id),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("content_hash", sa.String(40)),
    sa.Column("content", JsonDoc),
    # hash of the NDJSON line a bulk import wrote this version from (revision 0011); empty after any other write
    sa.Column("line_hash", sa.String(40)),
)
# one person's entries with their versions, answered from the index alone (revision 0012: the summary's first read)
sa.Index("ix_resource_patient_versions", resource.c.patient_id, resource.c.deleted, resource.c.res_type, resource.c.id,
         resource.c.version, resource.c.last_updated, resource.c.source, resource.c.content_hash)
sa.Index("ix_resource_type_updated", resource.c.res_type, resource.c.last_updated)
sa.Index("ix_resource_source", resource.c.source)

# Every version ever written, the current one included.
resource_version = sa.Table(
    "resource_version", metadata,
    sa.Column("res_type", Type, primary_key=True),
    sa.Column("id", Id, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("last_updated", sa.String(40), nullable=False),
    sa.Column("source", sa.String(255)),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("content", JsonDoc),
    # the person whose record this version belongs to (revision 0007): history and vread check each version's own
    sa.Column("patient_id", Id),
)
sa.Index("ix_version_updated", resource_version.c.last_updated)
sa.Index("ix_version_type_updated", resource_version.c.res_type, resource_version.c.last_updated)


def _index_table(name: str, *columns: sa.Column, lookup: tuple[str, ...]) -> sa.Table:
    table = sa.Table(
        name, metadata,
        sa.Column("res_type", Type, nullable=False),
        sa.Column("res_id", Id, nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        *columns,
    )
    sa.Index(f"ix_{name}_lookup", table.c.res_type, table.c.param, *(table.c[c] for c in lookup))
    sa.Index(f"ix_{name}_res", table.c.res_id, table.c.res_type)
    return table


idx_token = _index_table(
    "idx_token",
    sa.Column("system", sa.String(255)),
    sa.Column("code", sa.String(255)),
    sa.Column("text", sa.String(255)),
    lookup=("code",),
)
idx_string = _index_table(
    "idx_string",
    sa.Column("value_norm", sa.String(255)),
    sa.Column("value_exact", sa.String(255)),
    lookup=("value_norm",),
)
idx_date = _index_table(
    "idx_date",
    sa.Column("low", sa.String(32)),
    sa.Column("high", sa.String(32)),
    lookup=("low",),
)
idx_reference = _index_table(
    "idx_reference",
    sa.Column("target_type", sa.String(64)),
    sa.Column("target_id", sa.String(255)),
    sa.Column("target_url", sa.String(512)),
    lookup=("target_id",),
)
sa.Index("ix_idx_reference_target", idx_reference.c.target_id, idx_reference.c.target_type)
idx_quantity = _index_table(
    "idx_quantity",
    sa.Column("value", sa.Float),
    sa.Column("system", sa.String(255)),
    sa.Column("code", sa.String(64)),
    sa.Column("unit", sa.String(64)),
    lookup=("value",),
)
idx_uri = _index_table(
    "idx_uri",
    sa.Column("value", sa.String(512)),
    lookup=("value",),
)

INDEX_TABLES = {
    "token": idx_token,
    "string": idx_string,
    "date": idx_date,
    "reference": idx_reference,
    "quantity": idx_quantity,
    "number": idx_quantity,
    "uri": idx_uri,
}

# Users, tokens, audit and bulk-export jobs: platform tables, not clinical data.
app_user = sa.Table(
    "app_user", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("display", sa.String(255)),
    sa.Column("practitioner_id", Id),
    sa.Column("organization_id", Id),
    sa.Column("patient_id", Id),
    sa.Column("password_hash", sa.String(255)),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
)
api_token = sa.Table(
    "api_token", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_name", sa.String(128), sa.ForeignKey("app_user.name"), nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("expires", sa.String(40), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)
audit_event = sa.Table(
    "audit_event", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", Id, nullable=False, unique=True),
    sa.Column("recorded", sa.String(40), nullable=False),
    sa.Column("user_name", sa.String(128)),
    sa.Column("role", sa.String(64)),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("patient_id", Id),
    sa.Column("entity", sa.String(255)),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
)
sa.Index("ix_audit_patient", audit_event.c.patient_id, audit_event.c.recorded)
sa.Index("ix_audit_user", audit_event.c.user_name, audit_event.c.recorded)
export_job = sa.Table(
    "export_job", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_name", sa.String(128), nullable=False),
    sa.Column("request", sa.String(2048), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("transaction_time", sa.String(40)),
    sa.Column("output", sa.Text),
    sa.Column("error", sa.Text),
)

# -- Information governance (revision 0003): access facts derived from FHIR resources on write ----------
# Who has a legitimate relationship with whom: one row per (patient, practitioner, organisation or practitioner
# role, basis), derived from Patient.generalPractitioner/managingOrganization/meta.source, CareTeam, EpisodeOfCare,
# open ServiceRequest/Task/CommunicationRequest/Communication. `basis` is the resource it came from. A row naming a
# PractitionerRole (revision 0005) is matched to users through that role's practitioner (and organisation) when
# access is checked, so it follows the role as it changes.
care_relationship = sa.Table(
    "care_relationship", metadata,
    sa.Column("patient_id", Id, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("practitioner_id", Id),
    sa.Column("organization_id", Id),
    sa.Column("basis", sa.String(140), nullable=False),
    sa.Column("ends", sa.String(40)),
    sa.Column("practitioner_role_id", Id),
)
sa.Index("ix_care_relationship_practitioner", care_relationship.c.practitioner_id, care_relationship.c.patient_id)
sa.Index("ix_care_relationship_organization", care_relationship.c.organization_id, care_relationship.c.patient_id)
sa.Index("ix_care_relationship_basis", care_relationship.c.basis)
sa.Index("ix_care_relationship_patient", care_relationship.c.patient_id)
sa.Index("ix_care_relationship_role", care_relationship.c.practitioner_role_id, care_relationship.c.patient_id)

# A person's choices from active Consent resources: objection to sharing ('all' or one 'organization')
# and the National Data Opt-out ('opt-out').
patient_choice = sa.Table(
    "patient_choice", metadata,
    sa.Column("patient_id", Id, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("organization_id", Id),
    sa.Column("basis", sa.String(140), nullable=False),
)
sa.Index("ix_patient_choice_patient", patient_choice.c.patient_id, patient_choice.c.kind)
sa.Index("ix_patient_choice_basis", patient_choice.c.basis)

# Entries visible only within the recording organisation: sealed (meta.security R) or marked private
# (meta.security V, the JoinedUp 'private' tag, or named in a Consent's deny provision.data).
restricted_item = sa.Table(
    "restricted_item", metadata,
    sa.Column("res_type", Type, nullable=False),
    sa.Column("res_id", Id, nullable=False),
    sa.Column("patient_id", Id),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("basis", sa.String(140), nullable=False),
)
sa.Index("ix_restricted_item_res", restricted_item.c.res_id, restricted_item.c.res_type)
sa.Index("ix_restricted_item_basis", restricted_item.c.basis)

# Break-glass grants, which are also the privacy officer's review queue.
break_glass = sa.Table(
    "break_glass", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_name", sa.String(128), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("practitioner_id", Id),
    sa.Column("organization_id", Id),
    sa.Column("patient_id", Id, nullable=False),
    sa.Column("reason_category", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("granted", sa.String(40), nullable=False),
    sa.Column("expires", sa.String(40), nullable=False),
    sa.Column("review_outcome", sa.String(16)),
    sa.Column("review_note", sa.Text),
    sa.Column("reviewed_by", sa.String(128)),
    sa.Column("reviewed_at", sa.String(40)),
)
sa.Index("ix_break_glass_user", break_glass.c.user_name, break_glass.c.expires)
sa.Index("ix_break_glass_review", break_glass.c.review_outcome, break_glass.c.granted)

# One row: a token replaced whenever access facts change, so other processes know to reload their caches.
governance_epoch = sa.Table(
    "governance_epoch", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("token", sa.String(64), nullable=False),
)

# Each epoch change that only added or removed care relationships (revision 0014): the token it set, the token it
# replaced and whose reach it changed (JSON: practitioners, organisations, whether practitioner roles), so that every
# process - not only the writer - follows the change in its cached facts in place instead of reloading them
# (governance.facts.AccessFacts._follow). Kept for the last few thousand changes.
governance_epoch_step = sa.Table(
    "governance_epoch_step", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("previous", sa.String(64), nullable=False, index=True),
    sa.Column("delta", sa.Text, nullable=False),
)

# -- Care notifications (revision 0004): the in-app inbox and per-user notification choices. Platform data,
# not clinical FHIR: an item names its event, the person (by id only) and the resource it came from; patient
# details are shown only by reading them through the gate when the inbox is read.
inbox_item = sa.Table(
    "inbox_item", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_name", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("patient_id", Id),
    sa.Column("source_ref", sa.String(140)),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("hits", sa.Integer, nullable=False, default=1),
    sa.Column("occurred", sa.String(40)),
    sa.Column("first_at", sa.String(40), nullable=False),
    sa.Column("last_at", sa.String(40), nullable=False),
    sa.Column("read_at", sa.String(40)),
)
sa.Index("ix_inbox_item_user", inbox_item.c.user_name, inbox_item.c.read_at, inbox_item.c.last_at)
sa.Index("ix_inbox_item_collapse", inbox_item.c.user_name, inbox_item.c.event_type, inbox_item.c.patient_id,
         inbox_item.c.source_ref)

# How much decision support each user wants shown (revision 0006): the lowest severity of conflict alert on their
# pages and CDS cards (no row = every alert). High and critical alerts are always shown.
alert_preference = sa.Table(
    "alert_preference", metadata,
    sa.Column("user_name", sa.String(128), primary_key=True),
    sa.Column("min_severity", sa.String(16), nullable=False),
)

# Which event types each user wants in their inbox (no row = on).
notification_preference = sa.Table(
    "notification_preference", metadata,
    sa.Column("user_name", sa.String(128), primary_key=True),
    sa.Column("event_type", sa.String(32), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
)


# -- Trustworthy governance (revision 0007) -------------------------------------------------------------
# NHS numbers vouched for by the integration account (it writes what a PDS trace confirmed): only a number vouched
# for on both records links one person's records held by different organisations. A number added by anyone else
# links nothing until a privacy officer approves the link request it raises.
verified_identifier = sa.Table(
    "verified_identifier", metadata,
    sa.Column("patient_id", Id, nullable=False),
    sa.Column("system", sa.String(255), nullable=False),
    sa.Column("value", sa.String(64), nullable=False),
    sa.Column("verified_by", sa.String(128), nullable=False),
    sa.Column("verified_at", sa.String(40), nullable=False),
)
sa.Index("ix_verified_identifier_value", verified_identifier.c.system, verified_identifier.c.value)
sa.Index("ix_verified_identifier_patient", verified_identifier.c.patient_id)

# Confirmed links between two Patient records of the same person (one row each way): made by the integration
# account (Patient.link), by confirmed record linkage, or by a privacy officer approving a link request.
patient_link = sa.Table(
    "patient_link", metadata,
    sa.Column("patient_id", Id, primary_key=True),
    sa.Column("other_id", Id, primary_key=True),
    sa.Column("basis", sa.String(32), nullable=False),
    sa.Column("confirmed_by", sa.String(128), nullable=False),
    sa.Column("confirmed_at", sa.String(40), nullable=False),
    sa.Column("review_id", Id),
)
sa.Index("ix_patient_link_other", patient_link.c.other_id)

# The privacy officer's review queue beside break-glass: link requests ('link': two records said to be one person)
# and changes to a person's choices made by a privacy officer on their behalf ('choice-change').
privacy_review = sa.Table(
    "privacy_review", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("patient_id", Id, nullable=False),
    sa.Column("other_patient_id", Id),
    sa.Column("entity", sa.String(140)),
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_role", sa.String(64)),
    sa.Column("requested_org", Id),
    sa.Column("requested_at", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.String(128)),
    sa.Column("decided_at", sa.String(40)),
    sa.Column("decision_note", sa.Text),
)
sa.Index("ix_privacy_review_status", privacy_review.c.status, privacy_review.c.requested_at)
sa.Index("ix_privacy_review_patient", privacy_review.c.patient_id)

# Failed sign-ins per account ("user:NAME") and per client address ("addr:IP"), for back-off and lockout.
auth_throttle = sa.Table(
    "auth_throttle", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("first_failure", sa.String(40)),
    sa.Column("last_failure", sa.String(40)),
    sa.Column("locked_until", sa.String(40)),
)

# HL7 v2 messages applied (interop/hl7): one row per (sending facility, message control id), written in the same
# transaction as the message's resources, so the same message sent twice is applied once (revision 0009).
hl7_message = sa.Table(
    "hl7_message", metadata,
    sa.Column("facility", sa.String(180), primary_key=True),
    sa.Column("control_id", sa.String(199), primary_key=True),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("received", sa.String(40), nullable=False),
    sa.Column("applied", sa.String(40), nullable=False),
    sa.Column("patient_id", Id),
    sa.Column("note", sa.Text),
)

# HL7 v2 messages that could not be applied (malformed, unmappable, unknown facility): kept whole with the reason and
# the segment and field at fault until they are replayed (revision 0009).
hl7_dead_letter = sa.Table(
    "hl7_dead_letter", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("received", sa.String(40), nullable=False),
    sa.Column("channel", sa.String(255)),
    sa.Column("facility", sa.String(180)),
    sa.Column("control_id", sa.String(199)),
    sa.Column("trigger", sa.String(16)),
    sa.Column("ack_code", sa.String(2), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("location", sa.String(64)),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("raw_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_attempt", sa.String(40)),
)
sa.Index("ix_hl7_dead_letter_status", hl7_dead_letter.c.status, hl7_dead_letter.c.received)
sa.Index("ix_hl7_dead_letter_hash", hl7_dead_letter.c.raw_hash)

# Published population figures precomputed for the dashboards (population/dashboard, `joinedup population
# precompute`): already suppressed, one document per key, written by the integration account through the gate
# (revision 0010, helper H).
published_figures = sa.Table(
    "published_figures", metadata,
    sa.Column("key", sa.String(120), primary_key=True),
    sa.Column("purpose", sa.String(120), nullable=False),
    sa.Column("computed_at", sa.String(40), nullable=False),
    sa.Column("computed_by", sa.String(128), nullable=False),
    sa.Column("seconds", sa.Float),
    sa.Column("content", JsonDoc, nullable=False),
)


def create_tables(bind, names: list[str]) -> None:
    """Create the named tables as defined here (a migration adding whole tables)."""
    metadata.create_all(bind, tables=[metadata.tables[t] for t in names])


def drop_tables(bind, names: list[str]) -> None:
    """Drop the named tables, last first (the migration's downgrade)."""
    metadata.drop_all(bind, tables=[metadata.tables[t] for t in reversed(names)])
