"""Alembic migrations: a database made by an earlier release is brought to the newest schema in place."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import joinedup.store.engine as store_engine
from joinedup.store.repository import Store
from tests.conftest import PG_URL, drop_database, fresh_database


def _config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_engine.__file__).with_name("migrations")))
    cfg.attributes["connection_engine"] = engine
    return cfg


def test_revision_0005_adds_practitioner_roles_to_an_existing_database(tmp_path):
    engine = store_engine.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = _config(engine)
    command.upgrade(cfg, "0004")
    # a 0004 database whose care_relationship table predates the column (as created by that release)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE care_relationship")
        conn.exec_driver_sql("CREATE TABLE care_relationship (patient_id VARCHAR(64) NOT NULL, kind VARCHAR(32) "
                             "NOT NULL, practitioner_id VARCHAR(64), organization_id VARCHAR(64), basis VARCHAR(140) "
                             "NOT NULL, ends VARCHAR(40))")
        conn.exec_driver_sql("INSERT INTO care_relationship VALUES ('p1', 'care-team', 'x', NULL, 'CareTeam/1', NULL)")
    command.upgrade(cfg, "head")
    inspector = sa.inspect(engine)
    assert "practitioner_role_id" in {c["name"] for c in inspector.get_columns("care_relationship")}
    assert "ix_care_relationship_role" in {i["name"] for i in inspector.get_indexes("care_relationship")}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT patient_id, practitioner_role_id FROM care_relationship").all() == [
            ("p1", None)]
    # and back down again
    command.downgrade(cfg, "0004")
    assert "practitioner_role_id" not in {c["name"] for c in sa.inspect(engine).get_columns("care_relationship")}


def test_a_new_database_goes_straight_to_head(tmp_path):
    engine = store_engine.make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    command.upgrade(_config(engine), "head")
    with engine.connect() as conn:  # ... 0012 (person's versions) -> 0013 (JSON as text) -> 0014 (epoch steps)
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == "0014"
    assert "published_figures" in sa.inspect(engine).get_table_names()
    assert "governance_epoch_step" in sa.inspect(engine).get_table_names()
    assert "line_hash" in {c["name"] for c in sa.inspect(engine).get_columns("resource")}


def test_revision_0012_reads_a_persons_versions_from_one_covering_index(tmp_path):
    """An 0011 database (the person's entries indexed by patient_id alone) gets the covering index in its place;
    the summary's first statement is then answered from the index (SQLite's plan says COVERING INDEX)."""
    engine = store_engine.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = _config(engine)
    command.upgrade(cfg, "0011")
    with engine.begin() as conn:  # as release 0011 made it
        names = {i["name"] for i in sa.inspect(conn).get_indexes("resource")}
        if "ix_resource_patient_versions" in names:
            conn.exec_driver_sql("DROP INDEX ix_resource_patient_versions")
        if "ix_resource_patient" not in names:
            conn.exec_driver_sql("CREATE INDEX ix_resource_patient ON resource (patient_id)")
    command.upgrade(cfg, "head")
    names = {i["name"] for i in sa.inspect(engine).get_indexes("resource")}
    assert "ix_resource_patient_versions" in names and "ix_resource_patient" not in names
    with engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT res_type, id, version, last_updated, source, content_hash FROM resource "
            "WHERE patient_id = ? AND deleted = ?", ("p1", False)))
    assert "COVERING INDEX ix_resource_patient_versions" in plan
    command.downgrade(cfg, "0011")
    names = {i["name"] for i in sa.inspect(engine).get_indexes("resource")}
    assert "ix_resource_patient" in names and "ix_resource_patient_versions" not in names


@pytest.mark.skipif(not PG_URL, reason="needs JOINEDUP_TEST_DATABASE_URL (PostgreSQL)")
def test_revision_0013_keeps_postgresql_documents_as_text_and_loses_none(tmp_path):
    """A 0012 PostgreSQL database held documents as JSONB: after 0013 they are text, every document still reads
    back whole through the store (current version and history), new writes store the text as given, and the
    downgrade turns them back into JSONB."""
    url = fresh_database("postgresql", tmp_path, f"m13_{uuid.uuid4().hex[:6]}")
    engine = store_engine.make_engine(url)
    cfg = _config(engine)
    try:
        command.upgrade(cfg, "0012")
        patient = {"resourceType": "Patient", "id": "p13", "name": [{"family": "Ng\u00e9", "given": ["Zoë"]}],
                   "birthDate": "1950-02-03", "active": True, "multipleBirthInteger": 2}
        with engine.begin() as conn:  # as release 0012 made them (0001 builds today's tables, so turn them back)
            for table in ("resource", "resource_version", "published_figures"):
                conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN content TYPE jsonb USING content::jsonb")
            doc = json.dumps(patient)
            conn.exec_driver_sql("INSERT INTO resource (res_type, id, version, last_updated, source, patient_id,"
                                 " deleted, content_hash, content) VALUES ('Patient', 'p13', 1,"
                                 " '2026-12-06T10:00:00.000', NULL, 'p13', false, 'h', %s::jsonb)", (doc,))
            conn.exec_driver_sql("INSERT INTO resource_version (res_type, id, version, last_updated, source, deleted,"
                                 " method, content, patient_id) VALUES ('Patient', 'p13', 1,"
                                 " '2026-12-06T10:00:00.000', NULL, false, 'PUT', %s::jsonb, 'p13')", (doc,))
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            kinds = dict(conn.exec_driver_sql(
                "SELECT table_name, data_type FROM information_schema.columns WHERE column_name = 'content' AND"
                " table_name IN ('resource', 'resource_version', 'published_figures')").all())
        assert kinds == {"resource": "text", "resource_version": "text", "published_figures": "text"}
        store = Store(url)
        try:
            got = store.read("Patient", "p13")
            assert {k: v for k, v in got.content.items() if k != "meta"} == patient
            assert got.content["meta"]["versionId"] == "1"
            assert store.vread("Patient", "p13", 1).content["name"] == patient["name"]
        finally:
            store.engine.dispose()
        command.downgrade(cfg, "0012")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT data_type FROM information_schema.columns WHERE table_name ="
                                        " 'resource' AND column_name = 'content'").scalar_one() == "jsonb"
            assert conn.exec_driver_sql("SELECT content->'name'->0->>'given' FROM resource WHERE id = 'p13'"
                                        ).scalar_one() == '["Zoë"]'
    finally:
        engine.dispose()
        drop_database(url)
