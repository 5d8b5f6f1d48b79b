"""Alembic migrations: a database made by an earlier release is brought to the newest schema in place."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import joinedup.store.engine as store_engine


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
    with engine.connect() as conn:  # ... 0010 (published figures) -> 0011 (line hashes) -> 0012 (person's versions)
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == "0012"
    assert "published_figures" in sa.inspect(engine).get_table_names()
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
