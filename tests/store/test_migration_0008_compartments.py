"""Revision 0008: a database written before the R4 compartments gets every entry filed under its person and
re-indexed, on SQLite and PostgreSQL.

The earlier release stored Claim, ExplanationOfBenefit, ImagingStudy and Coverage with no person (patient_id NULL)
and no index rows, because its hand list of search parameters left those types out. The rows below are written the
way that release wrote them (the same tables and columns, straight into the database at the revision before 0008).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import joinedup.store.engine as store_engine
from joinedup.store import schema

PG_URL = os.environ.get("JOINEDUP_TEST_DATABASE_URL")
BEFORE = "0007"  # the revision 0008 follows
STAMP = "2026-01-01T00:00:00.000000"


def _config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_engine.__file__).with_name("migrations")))
    cfg.attributes["connection_engine"] = engine
    return cfg


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def old_db(request, tmp_path):
    """A database at the revision before 0008: a SQLite file, or a schema of its own in the PostgreSQL test
    database (dropped afterwards)."""
    if request.param == "sqlite":
        engine = store_engine.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield engine
        engine.dispose()
        return
    name = f"mig0008_{uuid.uuid4().hex[:8]}"
    admin = store_engine.make_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG_URL else "?"
    engine = store_engine.make_engine(f"{PG_URL}{sep}options=-csearch_path%3D{name}")
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
    admin.dispose()


def _put(conn, rtype: str, rid: str, versions: list[dict | None], patient_id: str | None) -> None:
    """One entry as the earlier release stored it: every version, the current row, the given person."""
    for n, content in enumerate(versions, start=1):
        conn.execute(schema.resource_version.insert().values(
            res_type=rtype, id=rid, version=n, last_updated=STAMP, source=None, deleted=content is None,
            method="PUT" if content is not None else "DELETE",
            content=content if content is not None else sa.null(), patient_id=patient_id))
    last = versions[-1]
    conn.execute(schema.resource.insert().values(
        res_type=rtype, id=rid, version=len(versions), last_updated=STAMP, source=None, patient_id=patient_id,
        deleted=last is None, content_hash=None if last is None else "x",
        content=last if last is not None else sa.null()))


def test_upgrade_files_old_entries_under_their_person_and_indexes_them(old_db):
    command.upgrade(_config(old_db), BEFORE)
    claim = {"resourceType": "Claim", "id": "c1", "status": "active", "use": "claim",
             "patient": {"reference": "Patient/p-a"}, "created": "2014-08-16",
             "provider": {"reference": "Organization/o1"}, "priority": {"coding": [{"code": "normal"}]},
             "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "x"}}]}
    claim_v1 = {**claim, "status": "draft"}
    imaging = {"resourceType": "ImagingStudy", "id": "i1", "status": "available",
               "subject": {"reference": "Patient/p-a"}}
    coverage = {"resourceType": "Coverage", "id": "cov1", "status": "active",
                "policyHolder": {"reference": "Patient/p-a"}, "beneficiary": {"reference": "Patient/p-b"},
                "payor": [{"reference": "Patient/p-a"}]}
    moved = {"resourceType": "Observation", "id": "o-kept", "status": "final", "code": {"text": "x"},
             "subject": {"reference": "Patient/p-a"}}
    with old_db.begin() as conn:
        _put(conn, "Patient", "p-a", [{"resourceType": "Patient", "id": "p-a"}], "p-a")
        _put(conn, "Claim", "c1", [claim_v1, claim], None)
        _put(conn, "ImagingStudy", "i1", [imaging, None], None)  # deleted before the upgrade
        _put(conn, "Coverage", "cov1", [coverage], None)
        _put(conn, "Observation", "o-kept", [moved], "p-other")  # already filed: stays where it is
        conn.execute(schema.idx_token.insert().values(res_type="Observation", res_id="o-kept", param="stale",
                                                      system=None, code="x", text=None))
    command.upgrade(_config(old_db), "head")
    r, v, ref = schema.resource, schema.resource_version, schema.idx_reference
    with old_db.connect() as conn:
        people = dict(conn.execute(sa.select(r.c.id, r.c.patient_id)).all())
        assert people == {"p-a": "p-a", "c1": "p-a", "i1": "p-a", "cov1": "p-b", "o-kept": "p-other"}
        versions = {(x[0], x[1]): x[2] for x in conn.execute(sa.select(v.c.id, v.c.version, v.c.patient_id))}
        assert versions[("c1", 1)] == versions[("c1", 2)] == "p-a"
        assert versions[("i1", 1)] == versions[("i1", 2)] == "p-a"  # the delete marker belongs to that person
        refs = set(conn.execute(sa.select(ref.c.res_type, ref.c.res_id, ref.c.param, ref.c.target_id)).all())
        assert ("Claim", "c1", "patient", "p-a") in refs
        assert ("Claim", "c1", "provider", "o1") in refs
        assert ("Coverage", "cov1", "beneficiary", "p-b") in refs and ("Coverage", "cov1", "patient", "p-b") in refs
        assert not [x for x in refs if x[1] == "i1"]  # a deleted entry has no index rows
        tokens = set(conn.execute(sa.select(schema.idx_token.c.res_id, schema.idx_token.c.param,
                                            schema.idx_token.c.code)).all())
        assert ("c1", "status", "active") in tokens and ("c1", "status", "draft") not in tokens
        assert ("o-kept", "stale", "x") not in tokens and ("o-kept", "status", "final") in tokens
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == "0014"  # head: 0008, then 0009 (HL7 v2), 0010 ... 0014


def test_upgrade_of_an_empty_database_and_downgrade(old_db):
    command.upgrade(_config(old_db), "head")
    command.downgrade(_config(old_db), BEFORE)
    with old_db.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == BEFORE
