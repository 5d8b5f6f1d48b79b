"""The query planner's statistics (Store.optimize, run after bulk loads and at start-up) do not pin a table to the
size it had when analysed. SQLite costs a table by its row count in sqlite_stat1 until the next ANALYZE
(https://www.sqlite.org/lang_analyze.html: "statistics ... are not automatically updated as the content of the
database changes"): a table of one row is scanned rather than searched by its index, however large it grows. A new
site's inbox and audit trail start that small and are looked up at every delivery and every access-log read.
PostgreSQL analyses changed tables itself when autovacuum is on; when it is off, the store does (`_statistics`)."""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest
import sqlalchemy as sa

from joinedup.governance.gate import get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.store.repository import PLANNER_MIN_ROWS, STATISTICS_EVERY
from tests.conftest import PG_URL, drop_database, fresh_database

# the notification worker's collapse lookup (governance/platform.py _deliver_all) and a person's access log
INBOX_LOOKUP = ("SELECT id FROM inbox_item WHERE ((user_name = ? AND event_type = ? AND patient_id = ? AND source_ref"
                " = ?) OR (user_name = ? AND event_type = ? AND patient_id = ? AND source_ref = ?)) AND last_at >= ?")
ACCESS_LOG = "SELECT content FROM audit_event WHERE patient_id = ? ORDER BY seq DESC LIMIT 50"  # search_events


def _items(db: sqlite3.Connection, start: int, n: int) -> None:
    db.executemany(
        "INSERT INTO inbox_item (user_name, event_type, patient_id, source_ref, title, hits, first_at, last_at)"
        " VALUES (?, 'admission', ?, ?, 'Admitted', 1, '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z')",
        [(f"gp{i % 50}", f"p{i}", f"Encounter/e{i}") for i in range(start, start + n)])
    db.commit()


def _plan(path, sql: str) -> str:
    with sqlite3.connect(path) as db:  # a new connection: it reads the statistics as they are now
        return " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?")))


def test_a_table_analysed_nearly_empty_is_still_searched_by_its_indexes(tmp_path):
    path = tmp_path / "stats.db"
    gate = get_gate(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        _items(db, 0, 1)

    def accesses(n: int) -> None:
        for i in range(n):
            gate.record(SYSTEM, "read", allowed=True, reason="test", patient_id=f"p{i % 100}")
        gate.flush_audit()

    accesses(1)
    gate.optimize()  # at start-up, with one inbox item and one audit event
    accesses(3000)  # then the site goes live
    with sqlite3.connect(path) as db:
        _items(db, 1, 5000)
        kept = {row[0] for row in db.execute("SELECT tbl FROM sqlite_stat1")}
    assert "USING INDEX ix_inbox_item_collapse" in _plan(path, INBOX_LOOKUP)
    assert "USING INDEX ix_audit_patient" in _plan(path, ACCESS_LOG)
    assert "inbox_item" not in kept and "audit_event" not in kept


def test_statistics_of_a_table_analysed_at_size_are_kept(tmp_path):
    path = tmp_path / "stats.db"
    gate = get_gate(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        _items(db, 0, PLANNER_MIN_ROWS + 500)
    gate.optimize()
    with sqlite3.connect(path) as db:
        stats = dict(db.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'inbox_item'").fetchall())
    assert stats["ix_inbox_item_collapse"].split()[0] == str(PLANNER_MIN_ROWS + 500)
    assert "USING INDEX ix_inbox_item_collapse" in _plan(path, INBOX_LOOKUP)


@pytest.mark.skipif(not PG_URL, reason="needs JOINEDUP_TEST_DATABASE_URL (PostgreSQL)")
def test_postgresql_without_autovacuum_the_store_analyses_the_tables_it_changed(tmp_path):
    url = fresh_database("postgresql", tmp_path, f"stats_{uuid.uuid4().hex[:6]}")
    gate = get_gate(url)
    admin = sa.create_engine(sa.engine.make_url(url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.exec_driver_sql("SHOW autovacuum").scalar() == "on":
                pytest.skip("the server's autovacuum keeps the statistics: the store leaves them to it")
        # a new site: every table empty, then one commit after another (the server's counters of changed rows,
        # which the store reads, lag its commits by up to a second)
        deadline, i, analysed = time.time() + 60, 0, {}
        while time.time() < deadline and "resource" not in analysed:
            for _ in range(50):
                gate.update(SYSTEM, "Organization", f"org-{i}",
                            {"resourceType": "Organization", "id": f"org-{i}", "name": f"Surgery {i}"})
                i += 1
            with admin.connect() as conn:
                analysed = dict(conn.exec_driver_sql(
                    "SELECT c.relname, c.reltuples FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
                    " WHERE s.last_analyze IS NOT NULL").all())
        assert i >= STATISTICS_EVERY  # not before a round of commits
        assert analysed.get("resource", 0) >= STATISTICS_EVERY  # planned at the size it had then
        assert "resource_version" in analysed and "idx_string" in analysed
        assert "export_job" not in analysed  # unchanged tables are left alone
    finally:
        admin.dispose()
        drop_database(url)
