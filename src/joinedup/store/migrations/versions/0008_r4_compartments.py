"""Complete FHIR R4 compartments and search parameters: file every stored entry under its person and re-index it.

Revision ID: 0008
Revises: 0007

Search parameters and Patient-compartment membership now come from the FHIR R4 definitions (joinedup.fhir.
definitions) instead of a hand list that left types out, so entries of those types (Claim, ExplanationOfBenefit,
ImagingStudy, Coverage, ...) were stored with no person and no search index. Existing data: every entry with no
person takes the one its content names under the R4 compartment parameters (current entries and each stored
version; a deleted entry takes its last version's person); an entry already filed under a person keeps it. Every
current entry's index rows are rebuilt with this release's definitions.
"""
from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 1000


def _doc(value: Any) -> dict | None:
    if value is None:
        return None
    return value if isinstance(value, dict) else orjson.loads(value)


def upgrade() -> None:
    from joinedup.fhir.search_params import registry
    from joinedup.store.repository import INDEX_SQL

    bind = op.get_bind()
    params = registry()
    r = sa.table("resource", sa.column("res_type"), sa.column("id"), sa.column("content"),
                 sa.column("patient_id"), sa.column("deleted"))
    v = sa.table("resource_version", sa.column("res_type"), sa.column("id"), sa.column("version"),
                 sa.column("content"), sa.column("patient_id"))
    tables = {kind: sa.table(t, sa.column("res_type"), sa.column("res_id"), *(sa.column(c) for c in cols))
              for kind, (t, cols) in INDEX_SQL.items()}

    # each stored version with no person: the person its own content names
    last = ("", "", 0)
    while True:
        rows = bind.execute(
            sa.select(v.c.res_type, v.c.id, v.c.version, v.c.content)
            .where(v.c.patient_id.is_(None), v.c.content.is_not(None),
                   sa.tuple_(v.c.res_type, v.c.id, v.c.version) > sa.tuple_(*map(sa.literal, last)))
            .order_by(v.c.res_type, v.c.id, v.c.version).limit(BATCH)).all()
        if not rows:
            break
        for t, i, n, content in rows:
            pid = params.patient_of(_doc(content) or {})
            if pid:
                bind.execute(sa.update(v).where(v.c.res_type == t, v.c.id == i, v.c.version == n)
                             .values(patient_id=pid))
        last = tuple(rows[-1][:3])

    # each current entry: its person (kept when already filed) and its index rows, rebuilt
    last2 = ("", "")
    while True:
        rows = bind.execute(
            sa.select(r.c.res_type, r.c.id, r.c.content, r.c.patient_id, r.c.deleted)
            .where(sa.tuple_(r.c.res_type, r.c.id) > sa.tuple_(*map(sa.literal, last2)))
            .order_by(r.c.res_type, r.c.id).limit(BATCH)).all()
        if not rows:
            break
        inserts: dict[str, list[dict]] = {k: [] for k in INDEX_SQL}
        for t, i, content, pid, deleted in rows:
            doc = _doc(content)
            if pid is None:
                if deleted or doc is None:
                    pid = bind.execute(sa.select(v.c.patient_id).where(
                        v.c.res_type == t, v.c.id == i, v.c.patient_id.is_not(None))
                        .order_by(v.c.version.desc()).limit(1)).scalar()
                else:
                    pid = params.patient_of(doc)
                if pid:
                    bind.execute(sa.update(r).where(r.c.res_type == t, r.c.id == i).values(patient_id=pid))
                    # a delete marker (no content) belongs to the person of the entry it deleted
                    bind.execute(sa.update(v).where(v.c.res_type == t, v.c.id == i, v.c.patient_id.is_(None))
                                 .values(patient_id=pid))
            if deleted or doc is None:
                continue
            for kind, found in params.index_rows(doc).items():
                cols = INDEX_SQL[kind][1]
                inserts[kind].extend({"res_type": t, "res_id": i, **dict(zip(cols, row))} for row in found)
        by_type: dict[str, list[str]] = {}
        for t, i, *_ in rows:
            by_type.setdefault(t, []).append(i)
        for table in tables.values():
            for t, ids in by_type.items():
                bind.execute(sa.delete(table).where(table.c.res_type == t, table.c.res_id.in_(ids)))
        for kind, values in inserts.items():
            if values:
                bind.execute(sa.insert(tables[kind]), values)
        last2 = tuple(rows[-1][:2])


def downgrade() -> None:
    """Nothing to undo: persons and index rows filled in stay correct for the earlier release."""
